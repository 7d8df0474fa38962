"""Lists the registered experiments."""

from experiments import EXPERIMENTS

width = max(map(len, EXPERIMENTS))
print("Experiments (run one with `python -m experiments.<name>`, --help for its flags):\n")
for name, what in EXPERIMENTS.items():
    print(f"  {name.ljust(width)}  {what}")
