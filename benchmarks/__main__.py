"""``python -m benchmarks NAME [args]``: see :mod:`benchmarks`."""
import sys

from benchmarks import main

sys.exit(main())
