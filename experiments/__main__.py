"""Lists the experiments."""

from experiments import summaries

found = summaries()
width = max(map(len, found))
print("Experiments (run one with `python -m experiments.<name>`, --help for its flags):\n")
for name, what in found.items():
    print(f"  {name.ljust(width)}  {what}")
