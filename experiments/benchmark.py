"""Training throughput (CNN step, sweep trials, every model vs PyTorch) and command overhead.

    python -m experiments.benchmark                 # the CNN step: alone, host data, device data
    python -m experiments.benchmark --sweep         # 8 sweep trials together vs one after another
    python -m experiments.benchmark --vs-torch      # every model against plain PyTorch
    python -m experiments.benchmark --overhead      # whole commands, phase by phase

The command of the measuring harness, the `benchmarks` package: its flags
and modes are benchmarks.cli's (`--help`); `python -m benchmarks` is the same.
"""

from benchmarks.cli import main

if __name__ == "__main__":
    main()
