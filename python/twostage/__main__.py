"""``python -m twostage``: the same as the ``twostage`` command."""

import sys

from twostage.cli import main

sys.exit(main())
