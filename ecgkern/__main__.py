"""``python -m ecgkern ...``: the ``ecgkern`` command, for environments without its console script."""
import sys

from .cli import main

sys.exit(main())
