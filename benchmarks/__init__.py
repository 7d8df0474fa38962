"""The measuring harness: what `python -m experiments.benchmark` times.

- cli: the command's flags and modes; each mode writes its own JSON file.
- step_throughput: the CNN train step alone, with data on the host and on
  the device (the plain mode).
- sweep_throughput: K sweep trials trained together against one after
  another (--sweep).
- vs_torch: every model against a plain PyTorch loop, each side in a worker
  process of its own (--vs-torch); jax_trainer is our side, built on a
  training run's own pieces (mnist_jax.members, mnist_jax.placement),
  torch_baselines the other (its models: mnist_jax.torch_models).
- overhead: whole commands timed as processes, phase by phase (--overhead).

The library and the experiments never import this package;
experiments/benchmark.py hands the command over to benchmarks.cli.
"""
