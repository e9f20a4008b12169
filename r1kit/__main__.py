"""``python -m r1kit ...`` is the ``r1kit`` command; launchers need it: ``accelerate launch -m r1kit train RECIPE``."""

import sys

from r1kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
