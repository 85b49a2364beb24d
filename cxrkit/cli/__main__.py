"""``python -m cxrkit.cli ...`` (what ``torchrun -m cxrkit.cli`` runs): the ``cxrkit`` command."""

import sys

from cxrkit.cli import main

sys.exit(main())
