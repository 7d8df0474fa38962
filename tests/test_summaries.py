"""A run leaves TensorBoard events (scalars, image, hparams) and metrics.json."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_jax import models, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_splits):
    workdir = tmp_path_factory.mktemp("run")
    config = train.TrainConfig(epochs=2, batch_size=32, eval_batch_size=50, log_every_steps=4)
    train.train_and_evaluate(config, models.get_model("cnn"), synthetic_splits, workdir,
                             experiment="unit", progress=False)
    return workdir


def test_scalars_and_confusion_matrix_image_are_logged(finished_run):
    events = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "learning_rate", "train/loss_step"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("val/accuracy")] == [10, 20]
    assert len(events.Scalars("train/loss_step")) >= 4
    assert events.Scalars("learning_rate")[0].value == pytest.approx(1e-3)
    (image,) = events.Images("test/confusion_matrix")
    assert image.width > 100 and image.height > 100
    assert (finished_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hparams_are_in_the_same_run(finished_run):
    run_dirs = [p for p in (finished_run / "tensorboard").iterdir() if p.is_dir()]
    assert run_dirs == []  # No timestamped sub-run (tensorboardX #519).
    events = EventAccumulator(str(finished_run / "tensorboard")).Reload()
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)
    assert b"learning_rate" in hparams["_hparams_/session_start_info"]
    assert "hparam/test_accuracy" in events.Tags()["scalars"]


def test_metrics_json_has_the_shared_shape(finished_run):
    summary = json.loads((finished_run / "metrics.json").read_text())
    for key in ("experiment", "config", "test", "train_seconds", "devices", "history", "model"):
        assert key in summary, key
    test = summary["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["f1_macro"] <= 1.0 and test["loss"] > 0
    assert np.array(test["confusion_matrix"]).sum() == 100
    assert summary["devices"]["count"] >= 1 and summary["devices"]["platform"] == "cpu"
    assert summary["model"]["parameters"] == 422_474
    assert summary["config"]["batch_size"] == 32 and len(summary["history"]) == 2
