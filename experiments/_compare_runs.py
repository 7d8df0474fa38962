"""Compare's rows: the runs found under a folder, grouped by experiment,
settings and machine (seeds aside), each group's mean and spread over its
seeds, and a row for each ensemble that experiments.best scored.

A row's label says how its settings differ from its experiment's: nothing
for the defaults; "quick" for a run on --quick's data subsets, then how it
differs from --quick's settings; else how it differs from the defaults.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import pathlib

import numpy as np

from mnist_jax.config import TrainConfig, flatten

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
# The settings only --quick changes: the data subsets a label calls "quick".
QUICK_SUBSETS = ("train_size", "test_size")
# Transfer-learning settings kept in metrics.json beside the config, and their defaults.
TRANSFER_DEFAULTS = {"image_size": 224, "weights": "ImageNet"}


def experiment_module(name: str):
    return importlib.import_module(f"experiments.{name}")


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
    """How a run's settings differ from its experiment's defaults ("" when
    they don't), in the settings' alphabetical order: a run on --quick's data
    subsets is "quick" and how it differs from --quick's settings, any other
    run how it differs from the defaults. The label follows the settings
    alone, never the flags that chose them."""
    module = experiment_module(name)
    config = run_settings(summary)
    if summary.get("cached_features"):  # Trained the classifier alone: "trainable" was dropped.
        config.pop("trainable", None)

    def differences(reference: TrainConfig) -> list[str]:
        defaults = flatten(_as_json(reference.to_dict()))
        return [f"{k}={_short(config[k])}" for k in sorted(config) if defaults.get(k) != config[k]]

    if on_quick_subsets(module, config):
        parts = ["quick", *differences(module.QUICK)]
    else:
        parts = differences(module.CONFIG)
    if "image_size" in summary and summary["image_size"] != TRANSFER_DEFAULTS["image_size"]:
        parts.append(f"{summary['image_size']}px")
    if "weights" in summary and not str(summary["weights"]).startswith(
        TRANSFER_DEFAULTS["weights"]
    ):
        parts.append("random init")
    return ", ".join(parts)


def on_quick_subsets(module, config: dict) -> bool:
    """Whether a run's flat settings hold the data subsets of `module`'s
    --quick (QUICK's train_size and test_size, where they are not CONFIG's)."""
    quick = {k: getattr(module.QUICK, k) for k in QUICK_SUBSETS}
    if quick == {k: getattr(module.CONFIG, k) for k in QUICK_SUBSETS}:
        return False
    return all(config.get(k) == v for k, v in quick.items())


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
