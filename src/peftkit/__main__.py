"""``python -m peftkit ...`` is the ``peftkit`` command (benchmarks start trainings this way)."""

import sys

from peftkit.cli import main

sys.exit(main())
