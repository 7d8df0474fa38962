"""A report's published result, and the table that sets a run beside it.

Every experiment holds its report's numbers as a `Reference`; its last
output is `comparison_table`: the report's column beside ours, rows for the
metrics the run measured, then time and device.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reference:
    """A report's published result; None where the report gives no number."""

    source: str  # Which report, and where it ran.
    accuracy: float | None = None  # Fraction in [0, 1].
    f1_macro: float | None = None
    loss: float | None = None
    mse: float | None = None  # Reconstruction MSE per pixel, [0, 1] images.
    psnr: float | None = None  # dB.
    ssim: float | None = None
    train_seconds: float | None = None
    device: str = "GPU (Colab/Kaggle, CUDA)"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def comparison_table(reference: Reference, summary: dict, title: str = "this run") -> str:
    """The report's numbers beside this run's, as a Markdown table.

    Rows are the metrics this run measured (accuracy, F1 and loss for
    classifiers; MSE, PSNR and SSIM for autoencoders), then time and device.
    """
    test = summary["test"]
    devices = summary["devices"]
    ours_device = f"{devices['platform']} x{devices['count']} ({', '.join(devices['kinds'])})"
    candidates = [
        ("test accuracy", "accuracy", _percent),
        ("test F1 (macro)", "f1_macro", lambda v: _number(v, ".4f")),
        ("test loss", "loss", lambda v: _number(v, ".4f")),
        ("test MSE", "mse", lambda v: _number(v, ".5f")),
        ("test PSNR (dB)", "psnr", lambda v: _number(v, ".2f")),
        ("test SSIM", "ssim", lambda v: _number(v, ".4f")),
    ]
    rows = [
        (label, fmt(getattr(reference, key)), fmt(test[key]))
        for label, key, fmt in candidates
        if key in test
    ]
    rows += [
        (
            "training time (s)",
            _number(reference.train_seconds, ".2f"),
            _number(summary["train_seconds"], ".2f"),
        ),
        # Compiled ahead of the clock: the report's PyTorch has nothing to compile.
        ("compile time (s)", "—", _number(summary.get("compile_seconds"), ".2f")),
        ("device", reference.device, ours_device),
    ]
    header = ("", f"report ({reference.source})", title)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )
