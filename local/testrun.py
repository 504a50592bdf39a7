"""The test driver behind ``make test``: start the stack if needed, run pytest, stop only
what this run started, exit with pytest's code.

    python -m local.testrun [extra pytest arguments]
"""

from __future__ import annotations

import os
import subprocess
import sys

from local import stack
from local.settings import REPO_ROOT, client_env

TEST_DIRS = ("tests/unit", "tests/integration", "tests/infra")


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    result = stack.UpResult()
    try:
        try:
            stack.up(result=result)
        except stack.StackError as exc:
            print(exc.line(), file=sys.stderr, flush=True)
            return 1
        dirs = [d for d in TEST_DIRS if (REPO_ROOT / d).is_dir()]
        env = dict(os.environ)
        env.update(client_env())
        print(f"testrun: pytest {' '.join(dirs + extra)}", flush=True)
        return subprocess.call([sys.executable, "-m", "pytest", *dirs, *extra], cwd=str(REPO_ROOT), env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        if result.started:
            print(f"testrun: stopping what this run started: {', '.join(result.started)}", flush=True)
            stack.down(result.started)
        elif result.reused:
            print("testrun: the stack was already running; leaving it up", flush=True)


if __name__ == "__main__":
    sys.exit(main())
