"""`python -m receiver.cli`, the same as `osma-router`."""

import sys

from .main import main

sys.exit(main())
