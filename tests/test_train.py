"""The train step: pure, learns, compiles once; evaluation sees every example."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import models, optim, parallel, pipeline, placement, steps, train
from mnist_jax.config import TrainConfig
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
from mnist_jax.tasks import StepConfig
from tests.conftest import (
    assert_runs_agree,
    assert_weights_agree,
    plain_sgd_cnn,
    small_run_config,
    synthetic_split,
)


@pytest.fixture
def state():
    config = TrainConfig()
    return steps.create_train_state(
        models.get_model("cnn"), optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
    )


@pytest.fixture(scope="module")
def batch():
    split = synthetic_split(64)
    return {"image": split.images, "label": split.labels, "mask": np.ones(64, bool)}


@pytest.mark.slow
def test_train_step_lowers_the_loss_on_a_fixed_batch(state, batch):
    step = steps.make_train_step(StepConfig())
    losses = []
    for _ in range(15):
        state, m = step(state, batch)
        losses.append(float(m["loss_sum"] / m["count"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 15


@pytest.mark.slow
def test_step_compiles_once_across_steps(state, batch):
    mesh = parallel.data_mesh()
    step = steps.make_train_step(StepConfig(noise=NoiseConfig("gaussian", 0.1)), mesh)
    state = parallel.replicate(state, mesh)  # As fit() places it.
    for i in range(4):
        partial = dict(batch, mask=np.arange(64) < 64 - 10 * i)  # a padded last batch too
        state, _ = step(state, partial)
    assert step._cache_size() == 1


@pytest.mark.slow
def test_step_is_pure(state, batch):
    step = jax.jit(steps.train_step, static_argnames="spec")
    first, m1 = step(state, batch, spec=StepConfig(noise=NoiseConfig("gaussian", 0.2)))
    again, m2 = step(state, batch, spec=StepConfig(noise=NoiseConfig("gaussian", 0.2)))
    np.testing.assert_array_equal(m1["loss_sum"], m2["loss_sum"])
    jax.tree.map(np.testing.assert_array_equal, first.params, again.params)


def test_every_step_gets_new_dropout_keys(state):
    keys = {tuple(np.asarray(steps.step_keys(state.key, jnp.asarray(s))[0])) for s in range(100)}
    assert len(keys) == 100


@pytest.mark.slow
def test_padding_does_not_change_the_update(state, batch):
    """Masked-out padding contributes nothing to loss, gradients or statistics.

    Plain SGD with rate 1 makes the parameter change equal the gradient
    (Adam's first step would amplify float noise in near-zero gradients).
    """
    sgd = optax.sgd(1.0)
    no_dropout = state.replace(
        apply_fn=models.get_model("cnn", conv_dropout=0.0, fc_dropout=0.0).apply,
        tx=sgd,
        opt_state=sgd.init(state.params),
    )
    step = jax.jit(steps.train_step, static_argnames="spec")
    small = {k: v[:40] for k, v in batch.items()}
    padded = dict(batch, mask=np.arange(64) < 40)
    a, ma = step(no_dropout, small, spec=StepConfig())
    b, mb = step(no_dropout, padded, spec=StepConfig())
    np.testing.assert_allclose(ma["loss_sum"], mb["loss_sum"], rtol=1e-5)
    assert int(mb["count"]) == 40
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a.params, b.params)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a.batch_stats, b.batch_stats
    )


def test_evaluate_scores_every_example(state):
    split = synthetic_split(130)
    result = steps.evaluate(state, split, batch_size=64)
    assert result["predictions"].shape == (130,)
    expected = (result["predictions"] == split.labels).mean()
    assert result["accuracy"] == pytest.approx(expected)


def test_optimizer_is_pytorch_adam_with_l2():
    """Adam with weight_decay in PyTorch adds wd * param to the gradient first."""
    config = TrainConfig(learning_rate=0.1, weight_decay=0.5)
    tx = optim.make_optimizer(config)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    # Gradient 0 + 0.5 * 2 = 1; Adam's first step moves by -lr * sign.
    np.testing.assert_allclose(updates["w"], [-0.1], rtol=1e-4)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0), ("val_fraction", 1.0)],
)
def test_bad_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TrainConfig(), **{field: value})


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cnn", "vit", "conv_ae"])
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(model_name):
    """--dtype bfloat16: convolutions and matmuls in bf16; parameters,
    optimizer state, batch-norm statistics and the loss stay float32."""
    task = "reconstruct" if model_name == "conv_ae" else "classify"
    config = TrainConfig(
        model=model_name,
        task=task,
        dtype="bfloat16",
        input_norm="unit" if task == "reconstruct" else "mnist",
    )
    small = {"vit": {"depth": 2, "dim": 64}}.get(model_name, {})  # Same layers, less to compile.
    model = models.get_model(model_name, **small)
    state = steps.create_train_state(
        model, optim.make_optimizer(config), 0, jnp.zeros((1, 28, 28, 1))
    )
    split = synthetic_split(16)
    batch = {"image": split.images, "label": split.labels, "mask": np.ones(16, bool)}
    spec = config.step_config()
    step = jax.jit(steps.train_step, static_argnames="spec")
    hlo = step.lower(state, batch, spec=spec).as_text()
    assert "bf16" in hlo and ("convolution" in hlo or "dot_general" in hlo)
    new, metrics = step(state, batch, spec=spec)
    floating = [
        x
        for x in jax.tree.leaves((new.params, new.opt_state, new.batch_stats))
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert floating and all(x.dtype == jnp.float32 for x in floating)
    assert metrics["loss_sum"].dtype == jnp.float32
    # Same step in float32: the bf16 loss agrees to bf16's ~3 significant digits.
    _, reference = step(state, batch, spec=dataclasses.replace(spec, dtype="float32"))
    np.testing.assert_allclose(metrics["loss_sum"], reference["loss_sum"], rtol=3e-2)


def test_float32_programs_carry_no_casts(state, batch):
    hlo = (
        jax.jit(steps.train_step, static_argnames="spec")
        .lower(state, batch, spec=StepConfig())
        .as_text()
    )
    assert "bf16" not in hlo


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="compute dtype 'float16'"):
        TrainConfig(dtype="float16")


@pytest.mark.slow
def test_steps_scanned_over_data_on_the_device_are_the_host_steps(synthetic_splits):
    """Two plain-SGD steps (a full batch, then the padded last one) as one
    lax.scan gathering from data on the device, and as two dispatched steps
    on host batches: the same parameters and metrics to float32 rounding."""
    mesh, split = parallel.data_mesh(), synthetic_splits.train
    config, initial_state = plain_sgd_cnn(0.1, mesh)
    spec = config.step_config()
    indices, masks = pipeline.batch_indices(np.arange(len(split.labels)), config.batch_size)
    indices, masks = indices[[0, -1]], masks[[0, -1]]  # (2, B)
    assert not masks[1].all()

    host, host_metrics = initial_state(), []
    step = steps.make_train_step(spec, mesh)
    for i, m in zip(indices, masks):
        host, metrics = step(
            host,
            parallel.shard_batch(pipeline.gather_batch(split.images, split.labels, i, m), mesh),
        )
        host_metrics.append(metrics)
    data = parallel.replicate({"image": split.images, "label": split.labels}, mesh)
    device, device_metrics = steps.make_device_train_steps(spec, mesh)(
        initial_state(), data, *parallel.shard_steps((indices, masks), mesh)
    )
    for k, metrics in enumerate(host_metrics):
        for key, value in metrics.items():
            np.testing.assert_allclose(device_metrics[key][k], value, rtol=1e-5, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        device.params,
        host.params,
    )


@pytest.mark.slow
def test_data_on_the_device_trains_like_data_on_the_host(synthetic_splits, tmp_path):
    """The lax.scan epoch gives the per-step path's numbers."""
    results = {}
    for where in ("host", "device"):
        config = small_run_config(epochs=1, data_placement=where)
        results[where] = train.train_and_evaluate(
            config,
            models.get_model("cnn"),
            synthetic_splits,
            tmp_path / where,
            RunOptions(experiment="test", progress=False),
        )
        assert results[where]["data_placement"] == where
    host, device = results["host"], results["device"]
    assert_runs_agree(device["history"], host["history"])  # Fusion differs: not bitwise.
    assert_weights_agree(
        device["state"].params, host["state"].params, max_move=10 * 1e-3
    )  # 10 steps, lr 1e-3.


def test_auto_placement_puts_mnist_on_accelerators_and_keeps_cpu_on_the_host(synthetic_splits):
    auto, mnist = TrainConfig(), synthetic_splits.train
    gpu = types.SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 16 << 30})
    gpu_mesh = types.SimpleNamespace(devices=np.array([gpu]))
    assert placement.resolve_data_placement(auto, mnist, gpu_mesh) == "device"
    # 5 GiB of images (not allocated): more than a quarter of the GPU's 16 GiB.
    huge = types.SimpleNamespace(
        images=np.broadcast_to(np.zeros((), np.uint8), (5 << 30,)), labels=np.zeros(1, np.int32)
    )
    assert placement.resolve_data_placement(auto, huge, gpu_mesh) == "host"
    assert (
        placement.resolve_data_placement(auto, mnist, parallel.data_mesh()) == "host"
    )  # This CPU.
    forced = TrainConfig(data_placement="device")
    assert placement.resolve_data_placement(forced, mnist, parallel.data_mesh()) == "device"


def test_onecycle_schedule_warms_up_to_the_peak_then_anneals():
    config = TrainConfig(schedule="onecycle", learning_rate=1e-2, epochs=2)
    lr = optim.learning_rate_schedule(config, steps_per_epoch=50)  # 100 steps in all.
    rates = np.array([float(lr(s)) for s in range(101)])
    assert rates[0] == pytest.approx(1e-2 / 25)  # OneCycleLR's div_factor.
    assert int(np.argmax(rates)) == 25 and rates.max() == pytest.approx(1e-2)
    assert np.all(np.diff(rates[:26]) > 0) and np.all(np.diff(rates[25:]) <= 0) and rates[-1] < 1e-5
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.learning_rate_schedule(config)
