"""ecgkern's benchmarks: ``python -m benchmarks`` (= ``ecgkern bench``) and the pytest-benchmark suite."""
