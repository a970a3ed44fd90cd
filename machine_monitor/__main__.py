"""``python -m machine_monitor`` runs the command-line interface."""

import sys

from machine_monitor.cli import main

sys.exit(main())
