"""`python -m dsmooth.cli`: the `dsmooth` command."""

import sys

from dsmooth.cli.main import main

sys.exit(main())
