"""A finished sweep as tables: one row per trial, as CSV and as Markdown."""

from __future__ import annotations

import csv
import io
import pathlib

from mnist_jax.files import write_atomically
from mnist_jax.search_space import Trial


def trial_rows(trials: list[Trial], results: dict[int, dict], select_key: str) -> list[dict]:
    """One row per trial: its swept values, then its best-epoch validation scores."""
    rows = []
    for trial in trials:
        result = results.get(trial.index)
        row = {"trial": trial.index, "group": result["group"] if result else None, **trial.params}
        if result is None:
            rows.append({**row, "status": "skipped (budget)"})
            continue
        best = result["best"]
        at_best = result["history"][best["epoch"] - 1]
        row.update(
            {
                "best_epoch": best["epoch"],
                f"best_{select_key}": best[select_key],
                **{k: v for k, v in at_best.items() if k.startswith(("val_", "train_"))},
                "group_seconds": result["group_seconds"],
                "status": "done",
            }
        )
        rows.append(row)
    return rows


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """The rows as CSV (columns: the union of their keys, in first-seen order), atomically."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))


def format_table(rows: list[dict], param_names: list[str], select_key: str, best_index: int) -> str:
    """The trials as a Markdown table, best first by `select_key`, the chosen one marked."""
    key = f"best_{select_key}"
    done = sorted(
        (r for r in rows if r["status"] == "done"),
        key=lambda r: r[key],
        reverse=select_key != "val_loss",
    )
    header = [
        "trial",
        *param_names,
        "best epoch",
        select_key.replace("_", " "),
        "val loss",
        "train loss",
    ]

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in done:
        mark = " (best)" if r["trial"] == best_index else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['trial']}{mark}",
                    *(cell(r[p]) for p in param_names),
                    str(r["best_epoch"]),
                    f"{r[key]:.4f}",
                    f"{r['val_loss']:.4f}",
                    f"{r.get('train_loss', float('nan')):.4f}",
                ]
            )
            + " |"
        )
    for r in rows:
        if r["status"] != "done":
            lines.append(
                "| "
                + " | ".join(
                    [str(r["trial"]), *(cell(r[p]) for p in param_names), r["status"], "", "", ""]
                )
                + " |"
            )
    return "\n".join(lines)
