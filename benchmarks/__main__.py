"""``python -m benchmarks [options]``: the same command as ``ecgkern bench``."""
import sys

from ecgkern.bench import main

sys.exit(main(sys.argv[1:]))
