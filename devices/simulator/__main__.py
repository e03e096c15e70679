"""``python -m alarmcentre_sim``: the same as the ``alarmcentre-sim`` command."""

import sys

from .cli import main

sys.exit(main())
