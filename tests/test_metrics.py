"""Our numpy metrics agree with scikit-learn's."""

import numpy as np
import pytest
from sklearn import metrics as sk

from mnist_jax import metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 500)
    predictions = np.where(
        rng.random(500) < 0.7, labels, rng.integers(0, 9, 500)
    )  # class 9 rarely predicted
    cm = metrics.confusion_matrix(labels, predictions)
    np.testing.assert_array_equal(cm, sk.confusion_matrix(labels, predictions, labels=range(10)))
    report = metrics.classification_report(cm)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
    assert report["f1_macro"] == pytest.approx(
        sk.f1_score(labels, predictions, average="macro", zero_division=0)
    )
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predictions, zero_division=0
    )
    for c in range(10):
        row = report["per_class"][str(c)]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c])
        )


def test_class_never_predicted_gets_zero_not_nan():
    cm = metrics.confusion_matrix(np.array([0, 1]), np.array([0, 0]), num_classes=2)
    report = metrics.classification_report(cm)
    assert report["per_class"]["1"]["precision"] == 0.0 and report["per_class"]["1"]["f1"] == 0.0
    assert "macro f1" in metrics.format_classification_report(report)
