"""Classification metrics from labels and predictions (numpy, host side)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10
) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true labels, columns predictions."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def classification_report(cm: np.ndarray) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1/support from a confusion matrix.

    A class never predicted (or absent) gets precision (or recall) 0, as
    scikit-learn's `zero_division=0`.
    """
    cm = np.asarray(cm, np.float64)
    true_positive = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    return {
        "accuracy": float(true_positive.sum() / max(cm.sum(), 1)),
        "f1_macro": float(f1.mean()),
        "per_class": {
            str(c): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(cm.shape[0])
        },
    }


def format_classification_report(report: dict) -> str:
    """The report as a text table, in the layout of scikit-learn's."""
    lines = [f"{'class':>8} {'precision':>10} {'recall':>10} {'f1':>10} {'support':>10}"]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:>8} {row['precision']:>10.4f} {row['recall']:>10.4f} "
            f"{row['f1']:>10.4f} {row['support']:>10d}"
        )
    total = sum(row["support"] for row in report["per_class"].values())
    lines.append(f"{'accuracy':>8} {'':>10} {'':>10} {report['accuracy']:>10.4f} {total:>10d}")
    lines.append(f"{'macro f1':>8} {'':>10} {'':>10} {report['f1_macro']:>10.4f} {total:>10d}")
    return "\n".join(lines)
