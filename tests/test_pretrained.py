"""torchvision weights into Flax: layouts, file formats, downloads, errors.

PyTorch is a test-only dependency: the reference networks are in
tests/torch_reference.py.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mnist_jax import data, idx, models, optim, pretrained, steps
from mnist_jax.config import TrainConfig
from mnist_jax.models import autoencoders, vgg_alexnet
from tests import torch_reference

torch.manual_seed(0)


def _random_torch(arch, **kw):
    net = torch_reference.BUILDERS[arch](**kw).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.03)
    return net


def _save(state_dict, path, fmt):
    if fmt == "zip":
        torch.save(state_dict, path)
    elif fmt == "legacy":
        torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    else:
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("arch, image_size, hidden", [("alexnet", 127, 4096), ("vgg16", 64, 512)])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_converted_weights_give_pytorchs_logits(tmp_path, arch, image_size, hidden, fmt):
    """Random torchvision-layout weights: Flax logits equal PyTorch's to 1e-4.

    The sizes make adaptive pooling non-trivial (2x2 -> 7x7, 2x2 -> 6x6), so
    the flatten-order conversion is exercised.
    """
    net = _random_torch(arch, num_classes=10, hidden=hidden)
    path = _save(net.state_dict(), tmp_path / f"w.{fmt}", fmt)
    params = pretrained.to_flax(pretrained.load_state_dict(path), arch, num_classes=10)
    model = models.get_model(arch, image_size=image_size, hidden=hidden)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
    ours = model.apply({"params": params}, x, train=False)
    inputs = np.asarray(vgg_alexnet.imagenet_inputs(x, image_size)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = net(torch.from_numpy(inputs.copy())).numpy()
    assert np.std(theirs) > 1e-2  # Not a trivially small output.
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_full_size_parameter_counts_match_torchvision(arch):
    model = models.get_model(arch)
    params = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    )["params"]
    assert steps.count_params(params) == torch_reference.count(
        torch_reference.BUILDERS[arch](num_classes=10)
    )


@pytest.mark.slow
def test_imagenet_final_layer_is_replaced_by_a_10_class_one(tmp_path):
    net = _random_torch("alexnet", num_classes=1000, hidden=64)
    params = pretrained.to_flax({k: v.numpy() for k, v in net.state_dict().items()}, "alexnet", 10)
    assert set(params["classifier"]) == {"fc_1", "fc_4"}  # fc_6 keeps its random init
    model = models.get_model("alexnet", image_size=63, hidden=64)
    state = steps.create_train_state(
        model, optim.make_optimizer(TrainConfig()), 0, jnp.zeros((1, 28, 28, 1))
    )
    loaded = steps.load_pretrained(state, params)
    np.testing.assert_array_equal(
        loaded.params["features"]["conv_0"]["kernel"], params["features"]["conv_0"]["kernel"]
    )
    np.testing.assert_array_equal(
        loaded.params["classifier"]["fc_6"]["kernel"], state.params["classifier"]["fc_6"]["kernel"]
    )


@pytest.mark.slow
def test_pretrained_of_the_wrong_shape_is_refused():
    model = models.get_model("alexnet", image_size=63, hidden=64)
    state = steps.create_train_state(
        model, optim.make_optimizer(TrainConfig()), 0, jnp.zeros((1, 28, 28, 1))
    )
    bad = {"classifier": {"fc_4": {"kernel": np.zeros((3, 3), np.float32)}}}
    with pytest.raises(ValueError, match="classifier/fc_4/kernel has shape"):
        steps.load_pretrained(state, bad)


def test_missing_keys_are_named(tmp_path):
    state_dict = {k: v.numpy() for k, v in _random_torch("alexnet", hidden=64).state_dict().items()}
    del state_dict["features.3.weight"]
    with pytest.raises(pretrained.WeightsError, match="features.3.weight missing"):
        pretrained.to_flax(state_dict, "alexnet", 10)


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": print}, f, protocol=2)
    with pytest.raises(pretrained.WeightsError):
        pretrained.load_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not weights at all"])
def test_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(pretrained.WeightsError, match="w.pth"):
        pretrained.load_state_dict(path)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(pretrained.WeightsError, match="--weights none"):
        pretrained.load_state_dict(tmp_path / "nowhere.pth")


def _publish(monkeypatch, tmp_path, arch, prefix):
    """Serves a weights file from a file:// URL under the name torchvision would give it."""
    source = tmp_path / "server" / f"{arch}-{prefix}.pth"
    source.parent.mkdir()
    torch.save(_random_torch(arch, hidden=64).state_dict(), source)
    monkeypatch.setitem(
        pretrained.PUBLISHED, arch, pretrained.PublishedWeights(source.as_uri(), prefix)
    )
    return source


def test_fetch_downloads_once_and_checks_the_hash(tmp_path, monkeypatch):
    source = _publish(monkeypatch, tmp_path, "alexnet", "0")
    digest = idx.sha256_of(source)
    monkeypatch.setitem(
        pretrained.PUBLISHED, "alexnet", pretrained.PublishedWeights(source.as_uri(), digest[:8])
    )
    path = pretrained.fetch_weights("alexnet", tmp_path / "cache")
    assert idx.sha256_of(path) == digest
    source.unlink()  # Cached: no second download.
    assert pretrained.fetch_weights("alexnet", tmp_path / "cache") == path


def test_fetch_refuses_a_file_with_the_wrong_hash(tmp_path, monkeypatch):
    _publish(monkeypatch, tmp_path, "alexnet", "deadbeef")
    with pytest.raises(pretrained.WeightsError, match="deadbeef"):
        pretrained.fetch_weights("alexnet", tmp_path / "cache")
    # Nothing half-downloaded stays (the lock file of mnist_jax.caches does, empty).
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_fetch_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(
        pretrained.PUBLISHED,
        "vgg16",
        pretrained.PublishedWeights("http://unreachable.invalid/vgg16-397923af.pth", "397923af"),
    )
    with pytest.raises(data.DownloadError, match="--weights PATH.*--weights none"):
        pretrained.fetch_weights("vgg16", tmp_path / "cache", timeout=5)


# ---------------------------------------------------------------------------
# PyTorch geometry of the building blocks.


@pytest.mark.parametrize("in_size, out_size", [(1, 7), (2, 7), (7, 7), (13, 6), (14, 7)])
def test_adaptive_avg_pool_matches_pytorch(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(2, in_size, in_size, 3)).astype(np.float32)
    ours = vgg_alexnet.adaptive_avg_pool(jnp.asarray(x), out_size)
    theirs = torch.nn.AdaptiveAvgPool2d(out_size)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_resize_matches_pytorch_bilinear():
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    ours = (
        vgg_alexnet.imagenet_inputs(jnp.asarray(x), 64)[..., 0] * vgg_alexnet.IMAGENET_STD[0]
        + vgg_alexnet.IMAGENET_MEAN[0]
    )
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding, size",
    [(3, 2, 1, 1, 3), (3, 2, 1, 1, 6), (5, 2, 0, 1, 12)],
)
def test_conv_transpose_has_pytorchs_geometry(kernel, stride, padding, output_padding, size):
    """The decoder's layers equal torch.nn.ConvTranspose2d with the same weights."""
    theirs = torch.nn.ConvTranspose2d(4, 2, kernel, stride, padding, output_padding)
    layer = autoencoders.torch_conv_transpose(2, kernel, stride, padding, output_padding)
    w = theirs.weight.detach().numpy()  # (in, out, kh, kw)
    params = {
        "params": {
            "kernel": w.transpose(2, 3, 0, 1)[::-1, ::-1],
            "bias": theirs.bias.detach().numpy(),
        }
    }
    x = np.random.default_rng(0).normal(size=(2, size, size, 4)).astype(np.float32)
    ours = layer.apply(params, jnp.asarray(x))
    expected = (
        theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    )
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_report_models_have_the_pytorch_parameter_counts():
    def count(name, sub=None):
        model = models.get_model(name)
        params = jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
        )["params"]
        return steps.count_params(params[sub] if sub else params)

    assert count("conv_ae", "encoder") == torch_reference.count(torch_reference.Encoder())
    assert count("conv_ae", "decoder") == torch_reference.count(torch_reference.Decoder())
    assert count("linear_ae") == torch_reference.count(torch_reference.LinearAutoencoder())
    assert count("deep_cnn") == torch_reference.count(torch_reference.DeepCNN())
