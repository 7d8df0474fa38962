"""`python -m benchmarks`: the same as `python -m experiments.benchmark`."""

from benchmarks.cli import main

main()
