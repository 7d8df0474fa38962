"""What a user waits for: whole commands, timed as processes, phase by phase.

    python -m experiments.benchmark --overhead            # median of 3
    python -m experiments.benchmark --overhead --quick    # once, cnn --quick --epochs 1 and predict
                                                          # (512 training images, 256 test)

The commands, each started as its own process:

    import       python -c "import experiments.cnn"
    cnn --quick  python -m experiments.cnn --quick
    cnn 1 epoch  python -m experiments.cnn --epochs 1
    predict      python -m mnist_jax.predict --checkpoint RUN one.png  (RUN: the 1-epoch run)

Each command runs twice on a compilation cache of its own that starts empty
(mnist_jax.caches): "first" compiles everything, "second" finds the
programs cached, as a user's next run does. MNIST's cache is warm (loaded
once before). Where the time goes comes from the run's metrics.json
("phase_seconds": data, setup, init, compile, train, test, figures,
finish); "start-up and the rest" is the wall time less those: the imports,
parsing, printing. The table gives the median over the repeats, and the
goals of docs/performance.md beside the measured values.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("import", "cnn --quick", "cnn --quick --epochs 1", "cnn 1 epoch", "predict")
PHASES = ("data", "setup", "init", "compile", "train", "test", "figures", "finish")
# (what, command, run, seconds): docs/performance.md's goals, on 2 CPU cores.
GOALS = (
    ("1-epoch run: wall - train - compile", "cnn 1 epoch", "second", 5.0),
    ("cnn --quick: wall", "cnn --quick", "second", 15.0),
    ("predict one image: wall", "predict", "second", 3.0),
    ("predict one image: wall", "predict", "first", 6.0),
)


def commit() -> str:
    """The checkout's commit, "+changes" where the tree differs from it."""

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def timed(argv: list[str], env: dict) -> float:
    """Wall seconds of a command; raises RuntimeError with its output if it fails."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return seconds


def phases_of(workdir: pathlib.Path) -> dict:
    """A run's phase seconds (metrics.json); its train and compile seconds where it
    records no phases."""
    summary = json.loads((workdir / "metrics.json").read_text())
    return summary.get("phase_seconds") or {
        "compile": summary["compile_seconds"],
        "train": summary["train_seconds"],
    }


def digit_image(path: pathlib.Path, data_flags: list[str]) -> None:
    """A test digit as a PNG, for predict."""
    from PIL import Image

    from mnist_jax import sources

    data_dir = (
        data_flags[data_flags.index("--data-dir") + 1] if "--data-dir" in data_flags else None
    )
    idx_dir = data_flags[data_flags.index("--idx-dir") + 1] if "--idx-dir" in data_flags else None
    mnist = sources.load_mnist(data_dir=data_dir, idx_dir=idx_dir)
    Image.fromarray(mnist.test.images[0, ..., 0]).save(path)


def one_repeat(scratch: pathlib.Path, data_flags: list[str], quick: bool) -> dict:
    """{command: {"first": {...}, "second": {...}}} of one repeat: "wall" and the phases."""
    python = sys.executable
    runs = {
        "import": [python, "-c", "import experiments.cnn"],
        "cnn --quick": [python, "-m", "experiments.cnn", "--quick", *data_flags, "--no-progress"],
        "cnn 1 epoch": [
            python,
            "-m",
            "experiments.cnn",
            "--epochs",
            "1",
            *data_flags,
            "--no-progress",
        ],
    }
    if quick:  # A smoke test of the benchmark itself: one short run to time and to predict with.
        del runs["cnn 1 epoch"]
        runs = {
            "import": runs["import"],
            "cnn --quick --epochs 1": [
                *runs.pop("cnn --quick"),
                *("--epochs", "1", "--train-size", "512", "--test-size", "256"),
            ],
        }
    predicted_run = "cnn 1 epoch" if not quick else "cnn --quick --epochs 1"
    image = scratch / "one.png"
    digit_image(image, data_flags)
    result = {}
    for name in (*runs, "predict"):
        cache = tempfile.mkdtemp(prefix="jax-cache-", dir=scratch)
        env = {**os.environ, "MNIST_JAX_COMPILATION_CACHE": cache, "TQDM_DISABLE": "1"}
        result[name] = {}
        for which in ("first", "second"):
            if name == "predict":
                argv = [
                    python,
                    "-m",
                    "mnist_jax.predict",
                    "--checkpoint",
                    str(scratch / f"{predicted_run} second".replace(" ", "_")),
                    str(image),
                ]
            else:
                workdir = scratch / f"{name} {which}".replace(" ", "_")
                argv = runs[name] + (["--workdir", str(workdir)] if name != "import" else [])
            cell = {"wall": timed(argv, env)}
            if name not in ("import", "predict"):
                cell.update(phases_of(workdir))
            result[name][which] = cell
    return result


def median_cells(repeats: list[dict]) -> dict:
    """The median of each measure over the repeats."""
    out = {}
    for name, runs in repeats[0].items():
        out[name] = {
            which: {
                key: statistics.median(
                    r[name][which][key] for r in repeats if key in r[name][which]
                )
                for key in cell
            }
            for which, cell in runs.items()
        }
    return out


def with_rest(cell: dict) -> dict:
    """The cell with "rest": wall less the phases it records."""
    return {**cell, "rest": cell["wall"] - sum(cell.get(p, 0.0) for p in PHASES)}


def goal_values(commands: dict) -> list[dict]:
    values = []
    for what, name, which, limit in GOALS:
        if name not in commands:
            continue
        cell = commands[name][which]
        value = (
            cell["wall"] - cell.get("train", 0) - cell.get("compile", 0)
            if "- train" in what
            else cell["wall"]
        )
        values.append(
            {
                "goal": f"{what} ({which} run)",
                "seconds": value,
                "limit": limit,
                "met": value <= limit,
            }
        )
    return values


def run(repeats: int, data_flags: list[str], quick: bool) -> dict:
    measured = []
    with tempfile.TemporaryDirectory(prefix="mnist-jax-overhead-") as scratch:
        for i in range(repeats):
            folder = pathlib.Path(scratch) / str(i)
            folder.mkdir()
            measured.append(one_repeat(folder, data_flags, quick))
            print(f"repeat {i + 1}/{repeats} done", flush=True)
    commands = {
        name: {which: with_rest(cell) for which, cell in runs.items()}
        for name, runs in median_cells(measured).items()
    }
    import jax

    from mnist_jax.parallel import host_cpu

    return {
        "machine": host_cpu(),
        "commit": commit(),
        "jax": jax.__version__,
        "repeats": repeats,
        "python_writes_bytecode": not sys.flags.dont_write_bytecode,
        "commands": commands,
        "goals": goal_values(commands),
        "each_repeat": measured,
    }


def format_result(result: dict) -> str:
    columns = [
        (name, which)
        for name in COMMANDS
        if name in result["commands"] and name != "import"
        for which in ("first", "second")
    ]
    head = " | ".join(f"{name}, {which}" for name, which in columns)
    lines = [
        f"Seconds, median of {result['repeats']}; {result['machine']}, commit {result['commit']}, "
        f'jax {result["jax"]}; `python -c "import experiments.cnn"`: '
        f"{result['commands']['import']['second']['wall']:.2f} s",
        f"| phase | {head} |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for key in ("wall", *PHASES, "rest"):
        cells = [result["commands"][name][which].get(key) for name, which in columns]
        lines.append(
            f"| {key} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |"
        )
    lines += ["", "| goal | seconds | limit | met |", "|---|---|---|---|"]
    lines += [
        f"| {g['goal']} | {g['seconds']:.2f} | {g['limit']:.0f} | {'yes' if g['met'] else 'NO'} |"
        for g in result["goals"]
    ]
    return "\n".join(lines)
