"""Report 004's comparison of every classifier: accuracy, F1, time, parameters, over seeds.

    python -m experiments.compare                      # collect the runs under runs/
    python -m experiments.compare --train              # train each classifier with seeds 0-2 first
    python -m experiments.compare --train --quick      # the same with the experiments' --quick settings
    python -m experiments.compare --train --models cnn,vit --seeds 5
    python -m experiments.compare --runs-dir results   # the summaries committed in results/

Runs are found by their summaries (metrics.json, or a copy of one under
another name) anywhere under --runs-dir and grouped by
experiment and settings (seed aside): a group gives mean +- std (sample
standard deviation) over its seeds, each seed counted once. Rows whose settings are not the
experiment's defaults say how they differ, e.g. "cnn (quick)". --train puts
seed k of model m in runs/compare/<m>/seed<k> (runs/compare/<m>/e<N>_seed<k>
with --epochs N; skipped where that run is finished, resumed where it was
interrupted). Writes comparison.json,
comparison.csv and comparison.png (test accuracy against training time, the
report's points hollow) into --out (default runs/compare), and prints the
table with report 004's numbers beside ours.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import importlib
import json
import pathlib

import numpy as np

from experiments import classifier_experiments
from mnist_jax import viz
from mnist_jax.cli import DEFAULT_RUNS_DIR, ShowDefaults, setup
from mnist_jax.config import TrainConfig, flatten
from mnist_jax.files import write_json
from mnist_jax.rundir import find_summaries

# The classifier experiments (experiments.classifier_experiments), which
# --train runs seed by seed; then the experiments beyond the reports, whose
# runs are collected but which train their own seeds (and their ensemble).
CLASSIFIERS = classifier_experiments()
BEYOND = ("best",)
COLLECTED = CLASSIFIERS + BEYOND
DEFAULT_SEEDS = 3
# Fields that do not change what a run measures; the seeds are what a group averages over.
IGNORED_FIELDS = {
    "seed",
    "split_seed",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "keep_best",
    "eval_batch_size",
    "data_placement",
}
# Transfer-learning settings kept in metrics.json beside the config, and their defaults.
TRANSFER_DEFAULTS = {"image_size": 224, "weights": "ImageNet"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults, prog="python -m experiments.compare", description=__doc__
    )
    add = parser.add_argument
    add(
        "--runs-dir",
        type=pathlib.Path,
        default=DEFAULT_RUNS_DIR,
        help=f"where to look for runs (default {DEFAULT_RUNS_DIR}/)",
    )
    add("--out", type=pathlib.Path, help=f"output folder (default: {DEFAULT_RUNS_DIR}/compare)")
    add("--models", default=",".join(COLLECTED), help=f"comma-separated, of {','.join(COLLECTED)}")
    add("--train", action="store_true", help="train the missing seeds of every model first")
    add("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 with --train")
    add(
        "--quick",
        action="store_true",
        help="with --train: each experiment's --quick settings (a smoke test)",
    )
    add("--epochs", type=int, help="with --train: this many epochs (default: each experiment's)")
    add(
        "--data-dir",
        type=pathlib.Path,
        help="with --train: tfds data dir holding mnist/3.0.1 (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    add(
        "--idx-dir",
        type=pathlib.Path,
        help="with --train: folder of the four MNIST IDX files (default: none; takes "
        "precedence over --data-dir)",
    )
    add("--no-download", action="store_true", help="with --train: never download MNIST or weights")
    return parser


def parse_models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in COLLECTED]
    if unknown or not names:
        raise ValueError(
            f"--models: unknown {unknown or 'none given'}; choose from {', '.join(COLLECTED)}"
        )
    return names


def experiment_module(name: str):
    return importlib.import_module(f"experiments.{name}")


def train_missing(
    models: tuple[str, ...],
    seeds: int,
    quick: bool,
    root: pathlib.Path,
    extra_args: list[str],
    epochs: int | None = None,
) -> dict[str, str]:
    """Trains each model's seeds 0..seeds-1 into root/<model>/seed<k> (or
    e<epochs>_seed<k>), unless finished; returns {run: why it failed} for
    those that could not run."""
    failed = {}
    if epochs is not None:
        extra_args = [*extra_args, "--epochs", str(epochs)]
    for name in models:
        if name in BEYOND:
            print(
                f"{name}: not trained here; python -m experiments.{name} trains its seeds",
                flush=True,
            )
            continue
        for seed in range(seeds):
            workdir = root / name / (f"seed{seed}" if epochs is None else f"e{epochs}_seed{seed}")
            if (workdir / "metrics.json").is_file():
                print(f"{name} seed {seed}: finished earlier, in {workdir}")
                continue
            argv = ["--seed", str(seed), "--workdir", str(workdir), "--no-progress", *extra_args]
            if (workdir / "checkpoints").is_dir():
                argv.append("--resume")
            if quick:
                argv.append("--quick")
            print(
                f"\n=== {name} seed {seed}: python -m experiments.{name} {' '.join(argv)}",
                flush=True,
            )
            try:
                experiment_module(name).main(argv)
            except SystemExit as e:  # A model that cannot run (no weights offline) leaves the rest.
                failed[f"{name} seed {seed}"] = f"exited with status {e.code}"
                print(
                    f"{name} seed {seed} failed (status {e.code}); going on with the others",
                    flush=True,
                )
    return failed


def run_settings(summary: dict) -> dict:
    """A run's config, flat, without IGNORED_FIELDS. A setting its
    metrics.json lacks is TrainConfig's default: settings are added with
    the default that keeps earlier runs' behaviour (label smoothing came
    after the first best-model runs, which trained without it)."""
    config = {**flatten(_as_json(TrainConfig().to_dict())), **flatten(summary["config"])}
    return {k: v for k, v in config.items() if k.split(".")[0] not in IGNORED_FIELDS}


def _as_json(value):
    return json.loads(json.dumps(value))  # Tuples as lists, as metrics.json holds them.


def settings_label(name: str, summary: dict) -> str:
    """How a run's settings differ from its experiment's defaults ("" when they don't)."""
    module = experiment_module(name)
    config = run_settings(summary)
    if summary.get("cached_features"):  # Trained the classifier alone: "trainable" was dropped.
        config.pop("trainable", None)

    def differences(reference: TrainConfig) -> list[str]:
        defaults = flatten(_as_json(reference.to_dict()))
        return [f"{k}={_short(v)}" for k, v in config.items() if defaults.get(k) != v]

    parts = []
    if not differences(module.CONFIG):
        pass
    elif not differences(module.QUICK):
        parts.append("quick")
    else:
        parts.extend(differences(module.CONFIG))
    if "image_size" in summary and summary["image_size"] != TRANSFER_DEFAULTS["image_size"]:
        parts.append(f"{summary['image_size']}px")
    if "weights" in summary and not str(summary["weights"]).startswith(
        TRANSFER_DEFAULTS["weights"]
    ):
        parts.append("random init")
    return ", ".join(parts)


def _short(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def examples_per_second(summary: dict) -> float | None:
    """Training examples processed per second of training time."""
    seconds = summary.get("train_seconds")
    if not seconds:
        return None
    return summary["data"]["train"] * len(summary.get("history", [])) / seconds


@dataclasses.dataclass
class Group:
    """The runs of one experiment with one set of settings, seeds aside."""

    experiment: str
    label: str
    runs: list[tuple[pathlib.Path, dict]] = dataclasses.field(default_factory=list)

    def values(self, get) -> list[float]:
        return [v for v in (get(s) for _, s in self.runs) if v is not None]

    def stat(self, get) -> tuple[float | None, float | None]:
        """(mean, sample std or None for a single run)."""
        values = self.values(get)
        if not values:
            return None, None
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None

    def row(self) -> dict:
        accuracy, accuracy_std = self.stat(lambda s: s["test"].get("accuracy"))
        f1, f1_std = self.stat(lambda s: s["test"].get("f1_macro"))
        seconds, seconds_std = self.stat(lambda s: s.get("train_seconds"))
        throughput, throughput_std = self.stat(examples_per_second)
        reference = dataclasses.asdict(experiment_module(self.experiment).REFERENCE)
        return {
            "experiment": self.experiment,
            "label": self.label,
            "runs": len(self.runs),
            "seeds": sorted(s["config"]["seed"] for _, s in self.runs),
            "accuracy": accuracy,
            "accuracy_std": accuracy_std,
            "f1_macro": f1,
            "f1_macro_std": f1_std,
            "train_seconds": seconds,
            "train_seconds_std": seconds_std,
            "examples_per_second": throughput,
            "examples_per_second_std": throughput_std,
            "parameters": self.runs[0][1]["model"]["parameters"],
            "devices": ", ".join(self.runs[0][1].get("devices", {}).get("kinds", [])),
            "run_dirs": [str(path) for path, _ in self.runs],
            "reference": {
                k: reference[k]
                for k in ("source", "accuracy", "f1_macro", "train_seconds", "device")
            },
        }


def group_runs(found: list[tuple[pathlib.Path, dict]], models: tuple[str, ...]) -> list[Group]:
    """Groups the classifier runs by experiment, settings and machine, in
    `models` order, the group with the most runs first within an experiment.

    Runs on another device kind, or on another CPU model (metrics.json's
    devices.host) or convolution path (devices.convolutions), are groups of
    their own: times do not mix. A CPU is named in a label only where the
    same settings ran on several."""
    groups: dict[tuple, Group] = {}
    parts: dict[tuple, tuple[str, list[str], str]] = {}  # key -> (name, settings and device, host)
    for path, summary in found:
        name = summary.get("experiment")
        if name not in models or "accuracy" not in summary.get("test", {}):
            continue
        config = run_settings(summary)
        devices = summary.get("devices", {})
        on_cpu = devices.get("platform", "cpu") == "cpu"
        device = "" if on_cpu else ", ".join(devices.get("kinds", []))
        host = devices.get("host", "CPU not recorded") if on_cpu else ""
        host += (
            ", oneDNN convolutions" if on_cpu and devices.get("convolutions") == "oneDNN" else ""
        )
        key = (
            name,
            json.dumps(config, sort_keys=True),
            summary.get("image_size"),
            str(summary.get("weights")),
            summary["data"]["train"],
            summary["data"]["test"],
            device,
            host,
        )
        if key not in groups:
            groups[key] = Group(name, "")
            parts[key] = (name, [x for x in (settings_label(name, summary), device) if x], host)
        group = groups[key]
        seed = summary["config"]["seed"]
        twin = next((p for p, s in group.runs if s["config"]["seed"] == seed), None)
        if twin is not None:  # The same run twice (a copy in results/, say): counted once.
            print(f"note: {path} repeats seed {seed} of {twin}; counting it once")
            continue
        group.runs.append((path, summary))
    hosts: dict[tuple, set] = {}
    for name, label, host in parts.values():
        hosts.setdefault((name, *label), set()).add(host)
    for key, (name, label, host) in parts.items():
        label = label + [host] if len(hosts[(name, *label)]) > 1 else label
        groups[key].label = f"{name} ({', '.join(label)})" if label else name
    return sorted(
        groups.values(), key=lambda g: (models.index(g.experiment), -len(g.runs), g.label)
    )


def ensemble_rows(root: pathlib.Path, models: tuple[str, ...]) -> list[dict]:
    """A row for each ensemble that `python -m experiments.best --ensemble K`
    scored (its best.json, or a copy of one under another name), each counted
    once. Different ensembles of one label (other machines', say) are told
    apart by their file, relative to `root`."""
    rows = {}
    root = pathlib.Path(root).expanduser()
    for path in sorted(root.rglob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # find_summaries has warned.
        if not (
            isinstance(result, dict)
            and result.get("experiment") in models
            and result.get("ensemble")
        ):
            continue
        name, ensemble = result["experiment"], result["ensemble"]
        label = ", ".join(
            x for x in (settings_label(name, result), f"ensemble of {ensemble['size']}") if x
        )
        reference = dataclasses.asdict(experiment_module(name).REFERENCE)
        row = {
            "experiment": name,
            "label": f"{name} ({label})",
            "runs": ensemble["size"],
            "seeds": ensemble["seeds"],
            "accuracy": ensemble["test_accuracy"],
            "accuracy_std": None,
            "f1_macro": ensemble["f1_macro"],
            "f1_macro_std": None,
            "train_seconds": ensemble["train_seconds"],
            "train_seconds_std": None,
            "examples_per_second": None,
            "examples_per_second_std": None,
            "parameters": ensemble["parameters"],
            "devices": result["seeds"][0]["device"],
            "run_dirs": [str(path)],
            "reference": {
                k: reference[k]
                for k in ("source", "accuracy", "f1_macro", "train_seconds", "device")
            },
        }
        rows.setdefault((name, label, row["accuracy"], tuple(row["seeds"])), row)
    repeats = collections.Counter((name, label) for name, label, _, _ in rows)
    for (name, label, _, _), row in rows.items():
        if repeats[(name, label)] > 1:
            row["label"] = f"{name} ({label}, {pathlib.Path(row['run_dirs'][0]).relative_to(root)})"
    return list(rows.values())


def _pm(mean, std, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    text = format(scale * mean, fmt)
    return text + (f" +- {format(scale * std, fmt)}" if std is not None else "")


def _ref(value, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, fmt)


def format_table(rows: list[dict]) -> str:
    width = max([26, *(len(r["label"]) for r in rows)])
    header = (
        f"{'model':<{width}} {'runs':>4} {'accuracy %':>16} {'macro F1':>17} {'train s':>16} "
        f"{'parameters':>11} {'examples/s':>16} | {'report %':>8} {'F1':>6} {'s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ref = r["reference"]
        lines.append(
            f"{r['label']:<{width}} {r['runs']:>4} {_pm(r['accuracy'], r['accuracy_std'], '.2f', 100):>16} "
            f"{_pm(r['f1_macro'], r['f1_macro_std'], '.4f'):>17} "
            f"{_pm(r['train_seconds'], r['train_seconds_std'], '.1f'):>16} {r['parameters']:>11,} "
            f"{_pm(r['examples_per_second'], r['examples_per_second_std'], ',.0f'):>16} | "
            f"{_ref(ref['accuracy'], '.2f', 100):>8} {_ref(ref['f1_macro'], '.4f'):>6} "
            f"{_ref(ref['train_seconds'], '.1f'):>7}"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    columns = [
        "label",
        "experiment",
        "runs",
        "accuracy",
        "accuracy_std",
        "f1_macro",
        "f1_macro_std",
        "train_seconds",
        "train_seconds_std",
        "parameters",
        "examples_per_second",
        "examples_per_second_std",
        "devices",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["report_accuracy", "report_f1_macro", "report_train_seconds"])
        for r in rows:
            writer.writerow(
                [r[c] for c in columns]
                + [r["reference"][k] for k in ("accuracy", "f1_macro", "train_seconds")]
            )


def main(argv=None) -> dict:
    setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        models = parse_models(args.models)
    except ValueError as e:
        parser.error(str(e))
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if (args.quick or args.epochs is not None) and not args.train:
        parser.error("--quick and --epochs choose the settings of --train; add --train")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    out = args.out or args.runs_dir / "compare"
    failed = {}
    if args.train:
        extra = [
            *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
            *(["--idx-dir", str(args.idx_dir)] if args.idx_dir else []),
            *(["--no-download"] if args.no_download else []),
        ]
        failed = train_missing(
            models, args.seeds, args.quick, args.runs_dir / "compare", extra, args.epochs
        )

    groups = group_runs(find_summaries(args.runs_dir), models)
    if not groups:
        parser.error(
            f"no finished classifier runs of {', '.join(models)} under {args.runs_dir}; "
            "train some (add --train) or point --runs-dir at them"
        )
    rows = [g.row() for g in groups] + ensemble_rows(args.runs_dir, models)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "comparison.json", {"runs_dir": str(args.runs_dir), "rows": rows, "failed": failed}
    )
    write_csv(rows, out / "comparison.csv")
    chart = [
        {**r, "accuracy_std": r["accuracy_std"] or 0.0, "train_seconds_std": r["train_seconds_std"]}
        for r in rows
        if r["accuracy"] is not None and r["train_seconds"]
    ]
    viz.save_png(
        viz.figure_to_array(viz.comparison_figure(chart, "Test accuracy against training time")),
        out / "comparison.png",
    )

    print(
        f"\nClassifiers on the MNIST test set, mean +- std over seeds (runs under {args.runs_dir}); "
        "report 004's numbers (PyTorch, GPU) on the right:\n"
    )
    print(format_table(rows))
    missing = [m for m in models if m not in {g.experiment for g in groups}]
    if missing:
        print(f"\nno runs of: {', '.join(missing)}")
    for run, why in failed.items():
        print(f"failed: {run} ({why})")
    print(f"\ncomparison.json, comparison.csv and comparison.png are in {out}")
    return {"rows": rows, "failed": failed, "out": str(out)}


if __name__ == "__main__":
    main()
