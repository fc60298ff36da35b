"""``python -m cli`` is the ``qesmon`` command (``qesmon up`` starts its children this way)."""

import sys

from cli.main import main

sys.exit(main())
