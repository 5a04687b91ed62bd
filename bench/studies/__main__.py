"""``python -m bench.studies composition|extension|deployment``: the CLI is bench/studies/cli.py."""

import sys

from bench.studies.cli import main

sys.exit(main())
