"""What compare writes from its rows: the table it prints (ours beside the
report's), comparison.csv, and comparison.png (test accuracy against
training time)."""

from __future__ import annotations

import csv
import pathlib

from mnist_jax import viz


def _pm(mean, std, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    text = format(scale * mean, fmt)
    return text + (f" +- {format(scale * std, fmt)}" if std is not None else "")


def _ref(value, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(scale * value, fmt)


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table: ours (mean +- std) | the report's."""
    width = max([26, *(len(r["label"]) for r in rows)])
    header = (
        f"{'model':<{width}} {'runs':>4} {'accuracy %':>16} {'macro F1':>17} {'train s':>16} "
        f"{'parameters':>11} {'examples/s':>16} | {'report %':>8} {'F1':>6} {'s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ref = r["reference"]
        lines.append(
            f"{r['label']:<{width}} {r['runs']:>4} "
            f"{_pm(r['accuracy'], r['accuracy_std'], '.2f', 100):>16} "
            f"{_pm(r['f1_macro'], r['f1_macro_std'], '.4f'):>17} "
            f"{_pm(r['train_seconds'], r['train_seconds_std'], '.1f'):>16} {r['parameters']:>11,} "
            f"{_pm(r['examples_per_second'], r['examples_per_second_std'], ',.0f'):>16} | "
            f"{_ref(ref['accuracy'], '.2f', 100):>8} {_ref(ref['f1_macro'], '.4f'):>6} "
            f"{_ref(ref['train_seconds'], '.1f'):>7}"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    """comparison.csv: a line per row, the report's numbers in the last columns."""
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


def write_chart(rows: list[dict], path: pathlib.Path) -> None:
    """comparison.png: every row with an accuracy and a training time, its
    seeds' spread as error bars, the report's point hollow beside it."""
    chart = [
        {**r, "accuracy_std": r["accuracy_std"] or 0.0, "train_seconds_std": r["train_seconds_std"]}
        for r in rows
        if r["accuracy"] is not None and r["train_seconds"]
    ]
    viz.save_png(
        viz.figure_to_array(viz.comparison_figure(chart, "Test accuracy against training time")),
        path,
    )
