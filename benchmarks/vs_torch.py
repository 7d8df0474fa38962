"""Our train step against a plain PyTorch loop, model by model, side by side.

    python -m experiments.benchmark --vs-torch     # every model, 3 rounds of >= 3 s
    python -m experiments.benchmark --vs-torch --models cnn,vit --steps 20 --rounds 5 \\
        --round-seconds 5

Each model gets two worker processes, one JAX and one PyTorch
(benchmarks.torch_baselines), each with its own copy of MNIST's training
set. They never run at once: the timed rounds alternate (JAX, then torch,
then JAX, ...), so both see the same machine. A round runs `--steps` steps
at a time until `--round-seconds` have passed, so fast models are timed
over many steps too; the table gives each side's median examples/s over
the rounds and ours / torch as the ratio (> 1: we are faster). A process of its
own per framework and model also gives honest peak memory: the worker's
peak resident set (framework, data and model included), and on a GPU the
framework's peak device allocation.

The JAX side (benchmarks.jax_trainer) trains as `fit` does by default,
with the training loop's own pieces: each epoch's batches shuffled as a
run shuffles them (mnist_jax.members.Single), the data placement `fit`
picks (config.DATA_PLACEMENTS "auto") and its step runner
(mnist_jax.placement): host batches, one jitted call a step, on the CPU;
the `--steps` steps of a call as one `lax.scan` over data on the device on
GPU and TPU. Each model uses its experiment's configuration (optimizer,
loss, input scaling, noise).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

FRAMEWORKS = ("jax", "torch")
_REPLY = "@@ "  # Prefix of the workers' replies on stdout; other lines are passed through.


def models() -> tuple[str, ...]:
    """Every model with a PyTorch baseline (benchmarks.torch_baselines.MODELS; imports torch)."""
    try:
        from benchmarks import torch_baselines
    except ImportError as e:
        raise ValueError(f"--vs-torch needs PyTorch ({e}): pip install -e '.[bench]'") from e
    return tuple(torch_baselines.MODELS)


def experiment_config(model: str):
    """The TrainConfig that `python -m experiments.<...>` trains `model` with
    (the denoiser: experiments.noisy's denoising stage)."""
    from experiments import model_experiments, noisy

    configs = {**model_experiments(), "denoising_ae": noisy.CONFIG.stage("2_denoiser")}
    if model not in configs:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(sorted(configs))}")
    return configs[model]


# --- Workers: one framework, one model, steered over stdin/stdout. ---------


def _reply(message: dict) -> None:
    print(_REPLY + json.dumps(message), flush=True)


def worker(framework: str, model: str, steps: int, data_dir=None, idx_dir=None) -> None:
    """Builds `framework`'s trainer for `model`, then answers commands on
    stdin until "quit": "run SECONDS" (times runs of `steps` steps until
    SECONDS have passed, at least one run) and "stats" (memory).

    Args:
      framework: "jax" or "torch" (FRAMEWORKS).
      model: the model's name (models()).
      steps: the steps of each timed run.
      data_dir: the tfds data dir (sources.load_mnist); None: its default.
      idx_dir: a folder of the four MNIST IDX files; None: none.
    """
    from mnist_jax import sources

    config = experiment_config(model)
    mnist = sources.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    images, labels = mnist.train.images, mnist.train.labels
    start = time.perf_counter()
    if framework == "jax":
        from benchmarks.jax_trainer import JaxTrainer

        trainer = JaxTrainer(config, images, labels, steps)
        setup = {"compile_seconds": trainer.compile(), "device": trainer.describe()}
    else:
        import torch

        from benchmarks import torch_baselines

        device = "cuda" if torch.cuda.is_available() else "cpu"
        trainer = torch_baselines.TorchTrainer(config, images, labels, device)
        setup = {
            "first_step_seconds": trainer.run(1),
            "device": f"{device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        }
    _reply({"ready": True, "setup_seconds": time.perf_counter() - start, **setup})
    for line in sys.stdin:
        command, *arguments = line.split()
        if command == "run":
            seconds, done = 0.0, 0
            while done == 0 or seconds < float(arguments[0]):
                seconds, done = seconds + trainer.run(steps), done + steps
            _reply({"seconds": seconds, "steps": done})
        elif command == "stats":
            _reply(
                {
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "device_peak_mib": (lambda b: None if b is None else b / 2**20)(
                        trainer.device_peak_bytes()
                    ),
                }
            )
        elif command == "quit":
            return
        else:
            _reply({"error": f"unknown command {command!r}"})


# --- The orchestrator. -----------------------------------------------------


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process; `ask` sends a command and waits for its reply."""

    def __init__(self, framework: str, model: str, steps: int, data_args: list[str]):
        self.name = f"{framework} {model}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.vs_torch",
                "--worker",
                framework,
                model,
                str(steps),
                *data_args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        self.output: list[str] = []

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY) :])
            self.output.append(line)
        raise WorkerError(
            f"the {self.name} worker exited ({self.process.wait()}):\n" + "".join(self.output[-30:])
        )

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def compare_model(
    model: str, steps: int, rounds: int, data_args: list[str], round_seconds: float = 0.0
) -> dict:
    """Both frameworks on `model`: setup, `rounds` alternating timed rounds,
    memory.

    Args:
      model: the model's name (models()).
      steps: the steps of each call.
      rounds: the timed rounds of each framework.
      data_args: the workers' data flags (--data-dir, --idx-dir).
      round_seconds: each round runs `steps` steps at a time for at least
        this long (at least once).

    Returns:
      The model's batch size and steps per call; each framework's setup,
      examples/s of each round and their median, and peak memory; and
      "speedup", JAX's examples/s over torch's.
    """
    config = experiment_config(model)
    workers = {}
    try:
        result = {"model": model, "batch_size": config.batch_size, "steps_per_call": steps}
        for framework in FRAMEWORKS:  # Set up one after the other: never two at once.
            workers[framework] = Worker(framework, model, steps, data_args)
            result[framework] = workers[framework].receive()
        for framework in FRAMEWORKS:
            result[framework]["rounds"] = []
        for _ in range(rounds):
            for framework in FRAMEWORKS:
                timed = workers[framework].ask(f"run {round_seconds}")
                result[framework]["rounds"].append(
                    timed["steps"] * config.batch_size / timed["seconds"]
                )
        for framework in FRAMEWORKS:
            side = result[framework]
            side.update(workers[framework].ask("stats"))
            side["examples_per_second"] = statistics.median(side["rounds"])
        result["speedup"] = (
            result["jax"]["examples_per_second"] / result["torch"]["examples_per_second"]
        )
        return result
    finally:
        for w in workers.values():
            w.close()


def run(
    models: tuple[str, ...],
    steps: int,
    rounds: int,
    data_dir=None,
    idx_dir=None,
    round_seconds: float = 0.0,
) -> dict:
    """Each of `models` compared in turn (compare_model).

    Args:
      models: the models' names (parse_models).
      steps: the steps of each call.
      rounds: the timed rounds of each framework.
      data_dir: the tfds data dir (sources.load_mnist); None: its default.
      idx_dir: a folder of the four MNIST IDX files; None: none.
      round_seconds: the least time of each round.

    Returns:
      The settings, each model's comparison and jax's version (format_result
      prints them).
    """
    data_args = [
        *(["--data-dir", str(data_dir)] if data_dir else []),
        *(["--idx-dir", str(idx_dir)] if idx_dir else []),
    ]
    import jax

    results = []
    for model in models:
        print(
            f"{model}: {rounds} rounds of {steps} steps at a time, >= {round_seconds} s, "
            "each side ...",
            flush=True,
        )
        results.append(compare_model(model, steps, rounds, data_args, round_seconds))
    return {
        "kind": "vs_torch",
        "rounds": rounds,
        "steps_per_call": steps,
        "round_seconds": round_seconds,
        "models": results,
        "jax": jax.__version__,
    }


def format_result(result: dict) -> str:
    first = result["models"][0]
    lines = [
        f"Training throughput, ours (JAX) against plain PyTorch; median of {result['rounds']} "
        f"alternating rounds (>= {result['round_seconds']} s each, {result['steps_per_call']} "
        "steps at a time)",
        f"JAX: {first['jax']['device']}, jax {result['jax']}; PyTorch: {first['torch']['device']}",
        "| model        | batch | JAX ex/s | torch ex/s | JAX / torch | JAX compile s "
        "| peak RSS MiB JAX / torch | device peak MiB JAX / torch |",
        "|--------------|-------|----------|------------|-------------|---------------"
        "|--------------------------|-----------------------------|",
    ]
    for m in result["models"]:
        j, t = m["jax"], m["torch"]
        device = (
            "-"
            if j["device_peak_mib"] is None
            else f"{j['device_peak_mib']:.0f} / {t['device_peak_mib'] or 0:.0f}"
        )
        lines.append(
            f"| {m['model']:<12} | {m['batch_size']:5d} | {j['examples_per_second']:8.0f} | "
            f"{t['examples_per_second']:10.0f} | {m['speedup']:10.2f}x | "
            f"{j['compile_seconds']:13.1f} | "
            f"{j['peak_rss_mib']:11.0f} / {t['peak_rss_mib']:<10.0f} | {device:<27} |"
        )
    return "\n".join(lines)


def parse_models(text: str) -> tuple[str, ...]:
    """The models of a --models flag: comma-separated names, or "all"."""
    known = models()
    if text == "all":
        return known
    asked = tuple(m for m in text.split(",") if m)
    unknown = [m for m in asked if m not in known]
    if unknown or not asked:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(known)}")
    return asked


if __name__ == "__main__":
    # python -m benchmarks.vs_torch --worker FRAMEWORK MODEL STEPS [--data-dir D] [--idx-dir D]
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--worker" or args[1] not in FRAMEWORKS:
        sys.exit("internal: run `python -m experiments.benchmark --vs-torch` instead")
    options = dict(zip(args[4::2], args[5::2]))
    worker(args[1], args[2], int(args[3]), options.get("--data-dir"), options.get("--idx-dir"))
