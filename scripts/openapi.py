"""Write the payment API's OpenAPI document (generated from the routes) to docs/openapi.json.

python scripts/openapi.py            # write it
python scripts/openapi.py --check    # exit 1 if the committed file differs from the routes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)

    from payments_core.entrypoints.api import openapi_document

    document = openapi_document()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != document:
            print(f"{args.output} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        print(f"{args.output} matches the routes")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
