"""The benchmarks behind scripts/bench, one module each (scripts/bench --help lists them)."""
