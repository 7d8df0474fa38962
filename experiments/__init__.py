"""The registry of experiments: `python -m experiments.<name>` runs one.

`python -m experiments` lists them. Each module holds its config, the
report's reference numbers and a `main()`; its docstring gives the command
and the result it should reach.
"""

# name -> what it reproduces (kept import-free so listing is instant).
EXPERIMENTS = {
    "cnn": "3-conv CNN of report 004 (Lab 2): 99.38 % test accuracy, F1 0.9938, 88.29 s",
    "benchmark": "training throughput (examples/s) of the CNN step, with and without the input pipeline",
}
