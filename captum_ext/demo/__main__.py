"""``python -m captum_ext.demo [options]``: the ``captum-ext demo`` command (see :mod:`captum_ext.cli`)."""

import sys

from ..cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
