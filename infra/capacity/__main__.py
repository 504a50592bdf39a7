import sys

from infra.capacity.report import main

sys.exit(main())
