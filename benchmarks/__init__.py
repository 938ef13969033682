"""ecgkern's benchmark suite (pytest-benchmark) and profiling scripts; the benchmark command is ``ecgkern bench``."""
