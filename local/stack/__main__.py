"""`python -m local.stack up|down|status|env|logs`: the stack's command line (local/stack/control.py)."""

import sys

from local.stack.control import main

sys.exit(main())
