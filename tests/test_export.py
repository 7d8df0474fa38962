"""Weights out to PyTorch and back: `python -m mnist_jax.export`,
mnist_jax.torch_layout and mnist_jax.torch_models, checked against torch
on real MNIST test digits."""

import json
import re

import jax
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from safetensors.torch import load_file

from mnist_jax import export, models, pipeline, rundir, steps, torch_layout, torch_models
from mnist_jax.config import TrainConfig
from tests.conftest import ROOT

EXPORTED = sorted(torch_layout.LAYOUTS)
AUTOENCODERS = ("conv_ae", "denoising_ae", "linear_ae")
TRAINED = ("cnn", "conv_ae", "deep_cnn", "linear_ae", "simple_cnn", "vit")  # Quick runs exist.
IMAGES = 256
TOLERANCE = 1e-4


def _random_variables(name: str, seed: int = 0) -> dict:
    """The model's variables drawn at He scale (kernels), batch statistics
    and norms' scales away from their initial 0 and 1: outputs of order 1,
    so a misplaced weight shows in them."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        key = path[-1].key
        if key == "kernel":
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        if key in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape)
        return rng.normal(0.0, 0.1, leaf.shape)  # biases, running means, embeddings

    shapes = export.variable_shapes(name)
    return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), shapes)


def _inputs(name: str, images: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """(our input (B, 28, 28, 1), torch's (B, 1, 28, 28)) of uint8 digits,
    scaled as the model's experiment scales them."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, 1, 28, 28) uint8
    unit = np.asarray(pipeline.to_unit_range(images))
    if name in AUTOENCODERS:
        return unit, pixels.float() / 255.0
    return np.asarray(pipeline.normalize(unit)), torch_models.normalize(pixels)


def _torch_outputs(name: str, state_dict: dict, inputs: torch.Tensor, **kw) -> np.ndarray:
    net = torch_models.MODELS[name](**kw)
    net.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        out = net.eval()(inputs).numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out  # NCHW -> NHWC


def _compare(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    difference = float(np.max(np.abs(ours - theirs)))
    print(f"\n{name}: largest |ours - torch| {difference:.3g} over {len(ours)} test digits")
    assert np.std(theirs) > 0.01, "outputs too uniform to tell a misplaced weight"
    assert difference <= TOLERANCE
    if name not in AUTOENCODERS:
        np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    return difference


@pytest.fixture(scope="module")
def test_digits(real_mnist):
    return real_mnist.test.images[:IMAGES]  # (256, 28, 28, 1) uint8


@pytest.mark.parametrize("name", EXPORTED)
def test_the_torch_model_gives_our_outputs_on_real_digits(name, test_digits, tmp_path):
    variables = _random_variables(name)
    path = tmp_path / f"{name}.safetensors"
    save_file(torch_layout.to_state_dict(name, variables, step=7), str(path))
    ours_in, torch_in = _inputs(name, test_digits)
    state = export.inference_state(models.get_model(name), variables)
    ours = np.asarray(jax.jit(steps.infer)(state, ours_in))
    _compare(name, ours, _torch_outputs(name, load_file(str(path)), torch_in))


def _save_pth(state_dict: dict, path) -> None:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("name", EXPORTED)
def test_export_then_load_gives_back_the_same_arrays(name, fmt, tmp_path):
    variables = _random_variables(name, seed=1)
    state_dict = torch_layout.to_state_dict(name, variables)
    path = tmp_path / f"w.{fmt}"
    save_file(state_dict, str(path)) if fmt == "safetensors" else _save_pth(state_dict, path)
    loaded = export.load_torch_weights(path, name)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", EXPORTED)
def test_a_pytorch_state_dict_loads_and_exports_back_exactly(name, tmp_path):
    """torch's own weights (.pth from torch.save) -> ours -> a state dict equal to torch's."""
    torch.manual_seed(0)
    net = torch_models.MODELS[name]()
    for buffer_name, buffer in net.named_buffers():
        if buffer_name.endswith(("running_mean", "running_var")):
            buffer.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    variables = export.load_torch_weights(tmp_path / "w.pth", name)
    back = torch_layout.to_state_dict(name, variables)
    original = net.state_dict()
    assert list(back) == [k for k in back if k in original] and set(back) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_the_flatten_order_is_reordered_for_pytorch():
    """The first Linear after a flatten: Flax's row (h, w, c) is torch's column (c, h, w)."""
    h, w, c, out = 3, 3, 4, 2
    kernel = np.arange(h * w * c * out, dtype=np.float32).reshape(h * w * c, out)
    t = torch_layout.Tensor("fc.weight", "params", ("Dense_0", "kernel"), "from_map", (h, w, c))
    weight = torch_layout._to_torch(t, kernel)  # (out, c * h * w)
    for i, j, k in np.ndindex(h, w, c):
        np.testing.assert_array_equal(weight[:, k * h * w + i * w + j], kernel[(i * w + j) * c + k])
    np.testing.assert_array_equal(torch_layout._from_torch(t, weight), kernel)


def test_the_definitions_agree_with_the_library():
    assert (torch_models.MNIST_MEAN, torch_models.MNIST_STD) == (
        pipeline.MNIST_MEAN,
        pipeline.MNIST_STD,
    )
    assert {n: c.__name__ for n, c in torch_models.MODELS.items()} == export.TORCH_CLASSES
    assert set(torch_layout.LAYOUTS) == set(export.TORCH_CLASSES)
    assert set(models.MODELS) == set(export.TORCH_CLASSES) | set(export.NOT_EXPORTED)


def _state_dict(name: str) -> dict:
    return torch_layout.to_state_dict(name, _random_variables(name))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("bn2.running_var"), "lacks bn2.running_var"),
        (lambda d: d.update(extra=np.zeros(1, np.float32)), "has extra, which the cnn model"),
        (lambda d: d.update({"fc1.weight": np.zeros((256, 1151), np.float32)}), "fc1.weight has"),
    ],
)
def test_a_state_dict_that_does_not_fit_is_refused_naming_the_key(tmp_path, change, message):
    state_dict = _state_dict("cnn")
    change(state_dict)
    save_file(state_dict, str(tmp_path / "w.safetensors"))
    with pytest.raises(export.WeightsError, match=re.escape(message)):
        export.load_torch_weights(tmp_path / "w.safetensors", "cnn")


def _fake_run(tmp_path, model: str):
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(model=model).to_dict()
    summary = {"config": config, "model": {"name": model, "hyperparameters": {}}}
    (run / "metrics.json").write_text(json.dumps(summary))
    return run


@pytest.mark.parametrize("model", sorted(export.NOT_EXPORTED))
def test_models_without_a_pytorch_counterpart_are_refused(tmp_path, capsys, model):
    out = tmp_path / "w.safetensors"
    assert export.main(["--checkpoint", str(_fake_run(tmp_path, model)), str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{model} has no one-to-one PyTorch counterpart" in error and "cnn, conv_ae" in error
    assert error.count("\n") == 1 and not out.exists()


def test_unusable_runs_and_outputs_are_refused_in_one_sentence(tmp_path, capsys):
    run = _fake_run(tmp_path, "cnn")
    existing = tmp_path / "saved.safetensors"
    existing.write_bytes(b"keep me")
    cases = [
        (tmp_path / "nowhere", tmp_path / "a.safetensors", "has no metrics.json"),
        (run, tmp_path / "missing" / "a.safetensors", "is not a folder"),
        (run, existing, "exists: nothing was written (--force replaces it)"),
        (run, tmp_path / "b.safetensors", "cannot load the best checkpoint"),
    ]
    for run_dir, out, message in cases:
        assert export.main(["--checkpoint", str(run_dir), str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    assert existing.read_bytes() == b"keep me"


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_an_exported_quick_run_gives_its_outputs_in_pytorch(
    name, quick_runs, test_digits, tmp_path
):
    """The command on a trained run: torch's outputs are the run's, and the
    file loads back into the run's exact weights."""
    workdir = quick_runs.get(name)["workdir"]
    out = tmp_path / f"{name}.safetensors"
    assert export.main(["--checkpoint", str(workdir), str(out)]) == 0
    run = rundir.load_run(workdir)
    hyperparameters = run.summary["model"]["hyperparameters"]
    with safe_open(str(out), "np") as f:
        assert json.loads(f.metadata()["hyperparameters"]) == hyperparameters
    ours_in, torch_in = _inputs(name, test_digits)
    ours = np.asarray(jax.jit(steps.infer)(run.state, ours_in))
    theirs = _torch_outputs(name, load_file(str(out)), torch_in, **hyperparameters)
    _compare(name, ours, theirs)
    loaded = export.load_torch_weights(out, name, **hyperparameters)
    trained = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    assert jax.tree.structure(loaded) == jax.tree.structure(jax.device_get(trained))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)
    state = export.inference_state(run.model, loaded)
    np.testing.assert_array_equal(jax.jit(steps.infer)(state, ours_in), ours)
    assert export.main(["--checkpoint", str(workdir), str(out), "--raw", "--force"]) == 0
    with safe_open(str(out), "np") as f:
        assert f.metadata()["weights"] == "raw"


@pytest.mark.slow
def test_a_run_with_a_moving_average_exports_it_and_raw_the_raw_weights(
    real_source, tmp_path, capsys
):
    from experiments import simple_cnn

    workdir = tmp_path / "run"
    flags = ["--quick", "--epochs", "1", "--ema-decay", "0.9", "--no-progress"]
    simple_cnn.main([*flags, "--workdir", str(workdir), *real_source.flags])
    raw_run = rundir.load_run(workdir, average=False)
    for raw, averaged in (False, True), (True, False):
        out = tmp_path / f"raw{raw}.safetensors"
        assert export.main(["--checkpoint", str(workdir), str(out)] + ["--raw"] * raw) == 0
        with safe_open(str(out), "np") as f:
            assert f.metadata()["weights"] == ("moving average" if averaged else "raw")
        weights = raw_run.state.ema["params"] if averaged else raw_run.state.params
        expected = torch_layout.to_state_dict("simple_cnn", {"params": weights})
        exported = load_file(str(out))
        for key, value in expected.items():
            np.testing.assert_array_equal(exported[key].numpy(), value, err_msg=key)
    assert "moving average" in capsys.readouterr().out
    final_layer = raw_run.state.ema["params"]["Dense_0"], raw_run.state.params["Dense_0"]
    assert not np.array_equal(final_layer[0]["kernel"], final_layer[1]["kernel"])


def _python_blocks(heading: str) -> list[str]:
    section = (ROOT / "docs" / "outputs.md").read_text().split(heading, 1)[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_the_docs_snippets_run(quick_runs, test_digits, tmp_path, monkeypatch):
    """docs/outputs.md's plain-Orbax reading, its PyTorch loading and the way
    back, as written."""
    workdir = quick_runs.get("cnn")["workdir"]
    monkeypatch.chdir(tmp_path)
    orbax_code, torch_code, back_code = _python_blocks("## Weights outside this project")
    scope = {}
    exec(orbax_code.replace("RUN_DIR", str(workdir)), scope)
    run = rundir.load_run(workdir)
    trained = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    for a, b in zip(jax.tree.leaves(scope["weights"]), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)
    assert export.main(["--checkpoint", str(workdir), "cnn.safetensors"]) == 0
    scope = {"pixels": torch.from_numpy(test_digits).permute(0, 3, 1, 2)}
    exec(torch_code, scope)
    ours_in, _ = _inputs("cnn", test_digits)
    logits = np.asarray(jax.jit(steps.infer)(run.state, ours_in))
    np.testing.assert_array_equal(scope["digits"].numpy(), logits.argmax(-1))
    torch.save(scope["model"].state_dict(), "cnn.pth")
    scope = {"inputs": ours_in}
    exec(back_code, scope)  # Called eagerly, as the snippet does: the same program.
    np.testing.assert_array_equal(scope["logits"], steps.infer(run.state, ours_in))
