"""Data parallelism: batch-size checks, multi-host setup, 8 simulated CPU
devices taking 1 device's step (to rounding) and training as it does,
checkpoints moving between the two."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from mnist_jax import models, parallel, train
from mnist_jax.config import TrainConfig
from mnist_jax.options import RunOptions
from tests import multidevice
from tests.conftest import assert_runs_agree

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fake_mesh(devices: int):
    return types.SimpleNamespace(shape={parallel.DATA_AXIS: devices})


def test_batch_size_that_does_not_split_names_the_nearest_valid_sizes():
    with pytest.raises(
        parallel.BatchSizeError, match=r"100 does not split across 8 devices.*96 or 104"
    ):
        parallel.check_batch_size(100, fake_mesh(8))
    with pytest.raises(parallel.BatchSizeError, match=r"Use 8 \(e.g"):
        parallel.check_batch_size(5, fake_mesh(8))  # No zero-sized suggestion.
    parallel.check_batch_size(64, fake_mesh(8))


def test_evaluation_batches_round_up_to_the_device_count():
    assert parallel.round_up(1000, fake_mesh(8)) == 1000
    assert parallel.round_up(1000, fake_mesh(6)) == 1002


def test_a_cpu_run_names_its_cpu(monkeypatch):
    info = parallel.describe(parallel.data_mesh())
    assert info["platform"] == "cpu" and info["host"].startswith(f"{os.cpu_count()}-core ")
    assert f"1 x cpu ({info['host']}), 1 process" in parallel.format_devices(info)
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert parallel.host_cpu().startswith(
        f"{os.cpu_count()}-core "
    )  # Not Linux: the platform's name.
    gpu = {**info, "platform": "gpu", "kinds": ["NVIDIA H100"]}
    assert "(NVIDIA H100)" in parallel.format_devices(gpu)


def test_distributed_is_initialised_only_when_the_environment_asks(monkeypatch):
    calls = []
    monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert not parallel.initialize_distributed({})
    assert not parallel.initialize_distributed({"MNIST_JAX_DISTRIBUTED": "0"})
    assert calls == []
    assert parallel.initialize_distributed({"MNIST_JAX_DISTRIBUTED": "1"})  # TPU pod: all detected
    assert parallel.initialize_distributed(
        {
            "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": "1",
        }
    )
    assert calls == [{}, {"num_processes": 2, "process_id": 1}]
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='one'"):
        parallel.initialize_distributed({"MNIST_JAX_DISTRIBUTED": "1", "JAX_PROCESS_ID": "one"})
    with pytest.raises(ValueError, match="MNIST_JAX_DISTRIBUTED='yes please'"):
        parallel.initialize_distributed({"MNIST_JAX_DISTRIBUTED": "yes please"})


def test_fit_refuses_a_batch_that_does_not_split(synthetic_splits, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "num_shards", lambda mesh: 8)
    with pytest.raises(parallel.BatchSizeError, match="multiple of 8"):
        train.train_and_evaluate(
            TrainConfig(batch_size=30, epochs=1),
            models.get_model("cnn"),
            synthetic_splits,
            tmp_path,
            RunOptions(experiment="test", progress=False),
        )
    assert not (tmp_path / "checkpoints").exists()  # Refused before anything was written.


def host_job(workdir, epochs, **kw):
    return {"devices": 1, "epochs": epochs, "placement": "host", "workdir": str(workdir), **kw}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs on 1 device here and on 8 simulated ones in a subprocess.

    Returns {name: {"history", "devices", ...}}: "one"/"eight" (2 epochs, host
    data), "eight_device_data", "one_then_eight" (epoch 1 here, epoch 2
    resumed on 8 devices), "eight_then_one" (the other way round), and
    "step_one"/"step_eight" (one plain-SGD step and an evaluation).
    """
    root = tmp_path_factory.mktemp("multidevice")
    one_then_eight = root / "one_then_eight"
    eight_then_one = root / "eight_then_one"
    here = {
        "one": multidevice.run_job(host_job(root / "one", 2)),
        "step_one": multidevice.run_job({"kind": "step", "devices": 1}),
    }
    multidevice.run_job(host_job(one_then_eight, 1))
    jobs = {
        "eight": host_job(root / "eight", 2, devices=8),
        "eight_device_data": host_job(root / "eight_device_data", 2, devices=8, placement="device"),
        "one_then_eight": host_job(one_then_eight, 2, devices=8, resume=True),
        "eight_then_one_first": host_job(eight_then_one, 1, devices=8),
        "step_eight": {"kind": "step", "devices": 8},
    }
    (root / "jobs.json").write_text(json.dumps(list(jobs.values())))
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.multidevice",
            str(root / "jobs.json"),
            str(root / "results.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    there = dict(zip(jobs, json.loads((root / "results.json").read_text())))
    here["eight_then_one"] = multidevice.run_job(host_job(eight_then_one, 2, resume=True))
    return {**here, **there}


@pytest.mark.slow
def test_one_step_on_eight_devices_is_one_step_on_one(runs):
    """The gradient of one batch, full or padded, and the evaluation of a
    split, on 8 devices and on 1: the same to float32 rounding."""
    eight, one = runs["step_eight"], runs["step_one"]
    for a, b in zip(eight["steps"], one["steps"], strict=True):
        assert a["metrics"].keys() == b["metrics"].keys()
        for key in a["metrics"]:
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-5), key
        gradient = np.asarray(b["update"])
        np.testing.assert_allclose(
            a["update"], gradient, rtol=1e-4, atol=1e-5 * np.abs(gradient).max()
        )
    for key in one["evaluation"]:
        assert eight["evaluation"][key] == pytest.approx(one["evaluation"][key], rel=1e-5), key


@pytest.mark.slow
def test_the_subprocess_really_used_eight_devices(runs):
    assert runs["eight"]["devices"]["count"] == 8
    assert (
        "'data': 8" in runs["eight"]["params_sharding"]
        and "P()" in runs["eight"]["params_sharding"]
    )
    assert runs["one"]["devices"]["count"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight", "eight_device_data"])
def test_eight_devices_train_like_one(runs, name):
    assert_runs_agree(runs[name]["history"], runs["one"]["history"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["one_then_eight", "eight_then_one"])
def test_a_checkpoint_moves_between_one_and_eight_devices(runs, name):
    assert [h["epoch"] for h in runs[name]["history"]] == [1, 2]
    assert_runs_agree(runs[name]["history"], runs["one"]["history"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_run(runs, tmp_path):
    """jax.distributed on one machine: 2 processes x 2 CPU devices, one run.

    Both processes build the same global batches from their own copy of the
    data, save into one checkpoint directory, and only process 0 writes
    metrics.json. The cross-process all-reduce sums in another order than one
    process does, and Adam's first steps turn such rounding into ~lr-sized
    moves of near-zero-gradient weights, so on these 300 examples the losses
    agree with one device to a few percent, not to 1e-4.
    """
    job = host_job(tmp_path / "run", 2, devices=4)
    (tmp_path / "jobs.json").write_text(json.dumps([job]))
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(rank),
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path / f"cache{rank}"),
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.multidevice",
                    str(tmp_path / "jobs.json"),
                    str(tmp_path / f"results{rank}.json"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    results = [json.loads((tmp_path / f"results{rank}.json").read_text())[0] for rank in range(2)]
    assert results[0]["devices"]["processes"] == 2 and results[0]["devices"]["count"] == 4
    assert results[0]["history"] == results[1]["history"]  # One run, seen from both processes.
    np.testing.assert_allclose(
        [h["train_loss"] for h in results[0]["history"]],
        [h["train_loss"] for h in runs["one"]["history"]],
        rtol=5e-2,
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["devices"]["processes"] == 2
    latest = tmp_path / "run" / "checkpoints" / "latest"
    assert max(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == 20
    assert any(p.name.isdigit() for p in (tmp_path / "run" / "checkpoints" / "best").iterdir())
