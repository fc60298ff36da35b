"""``python -m qesmon`` is the ``qesmon`` command."""

import sys

from qesmon.cli import main

sys.exit(main())
