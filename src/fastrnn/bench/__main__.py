"""``python -m fastrnn.bench``: the same as ``fastrnn bench``."""
import sys

from .cli import main

sys.exit(main())
