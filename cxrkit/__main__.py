"""``python -m cxrkit ...``: the ``cxrkit`` command."""

import sys

from cxrkit.cli import main

sys.exit(main())
