"""torchvision's ImageNet weights for VGG16 and AlexNet, read without torch.

`load_state_dict` reads a state dict from
- a PyTorch file (`torch.save`, zip format or the legacy format the 2017
  torchvision files use): its pickle is read by a restricted unpickler that
  only rebuilds tensors, never runs other code;
- a safetensors file with torchvision's key names.

`to_flax` converts it to TransferNet parameters: conv kernels OIHW -> HWIO,
linear weights transposed, and the first classifier layer's inputs reordered
from PyTorch's (C, H, W) flatten order to Flax's (H, W, C). The final layer
is kept only when its class count matches the model's (the report replaces
ImageNet's 1,000 classes with 10).

`fetch_weights` downloads torchvision's published file, checking the
sha256 prefix torchvision puts in the file name.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np

from mnist_jax import caches, idx, sources
from mnist_jax.models.vgg_alexnet import ARCHITECTURES, Conv


class WeightsError(Exception):
    """Weights that cannot be read or do not fit the model."""


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    url: str
    sha256_prefix: str  # torchvision file names carry the first hex digits of the sha256.

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


PUBLISHED = {
    "vgg16": PublishedWeights("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "alexnet": PublishedWeights(
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"
    ),
}

OFFLINE_HINT = (
    "Download the file elsewhere and pass it with --weights PATH (a .pth or a "
    "safetensors file with torchvision's key names), or train from random "
    "initialisation with --weights none."
)

# --------------------------------------------------------------------------
# Reading PyTorch files without torch.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 on a numpy storage."""
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(tensor, *_):
    return tensor


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays; refuses every other global."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"the file's pickle asks for {module}.{name}: not a plain state dict "
            "(only tensors are read, no code is run)"
        )

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel)
        _, storage_type, key, _, numel = pid[:5]
        dtype = _STORAGE_DTYPES.get(getattr(storage_type, "name", ""))
        if dtype is None:
            raise WeightsError(f"unsupported tensor storage {storage_type!r}")
        return self._load_storage(str(key), np.dtype(dtype), int(numel))


def _read_zip(path: pathlib.Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise WeightsError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            raw = archive.read(f"{prefix}data/{key}")
            return np.frombuffer(raw, dtype, count=numel)

        with archive.open(pickles[0]) as f:
            return _TensorUnpickler(io.BytesIO(f.read()), load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path: pathlib.Path) -> dict:
    """torch.save's format before 1.6: pickles (magic, version, sys info,
    the object), the storage keys, then each storage as int64 size + bytes."""
    with open(path, "rb") as f:
        if _SafeLoader(f).load() != _LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a PyTorch file (bad magic number)")
        _SafeLoader(f).load()  # protocol version
        _SafeLoader(f).load()  # sys info
        wanted: dict[str, tuple[np.dtype, int]] = {}
        storages: dict[str, np.ndarray] = {}

        def load_storage(key, dtype, numel):
            wanted[key] = (dtype, numel)
            return _Deferred(key)

        obj = _TensorUnpicklerDeferred(f, load_storage).load()
        keys = _SafeLoader(f).load()
        for key in keys:
            (size,) = struct.unpack("<q", f.read(8))
            dtype, _ = wanted[str(key)]
            storages[str(key)] = np.frombuffer(f.read(size * dtype.itemsize), dtype, count=size)
    return {name: _rebuild_tensor(storages[t.key], *t.args) for name, t in obj.items()}


class _SafeLoader(pickle.Unpickler):
    def find_class(self, module, name):
        raise WeightsError(f"unexpected {module}.{name} in a PyTorch file header")


@dataclasses.dataclass
class _Deferred:
    key: str


@dataclasses.dataclass
class _DeferredTensor:
    key: str
    args: tuple


class _TensorUnpicklerDeferred(_TensorUnpickler):
    """For the legacy format, whose storages come after the pickle."""

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, *args: _DeferredTensor(storage.key, args)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        return super().find_class(module, name)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch or safetensors state dict as {name: numpy array}."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist. " + OFFLINE_HINT)
    with open(path, "rb") as f:
        head = f.read(9)
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path)
        elif head[8:9] == b"{":  # safetensors: an 8-byte header length, then JSON.
            from safetensors.numpy import load_file

            state = load_file(str(path))
        elif head[:1] == b"\x80":  # a pickle: torch.save's legacy format.
            state = _read_legacy(path)
        else:
            raise WeightsError(f"{path} is neither a PyTorch nor a safetensors file")
    except WeightsError:
        raise
    except Exception as e:  # pickle, zip and safetensors errors alike
        raise WeightsError(f"could not read {path} as PyTorch or safetensors weights: {e}") from e
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: np.asarray(v) for k, v in state.items()}


# --------------------------------------------------------------------------
# Layout conversion.


def to_flax(state_dict: dict[str, np.ndarray], arch: str, num_classes: int) -> dict:
    """torchvision {name: array} -> {"features": ..., "classifier": ...} Flax params.

    Raises WeightsError naming what is missing or mis-shaped. The last layer
    is left out (to keep its random initialisation) when it has a different
    class count.
    """
    a = ARCHITECTURES[arch]

    def get(name, ndim):
        if name not in state_dict:
            raise WeightsError(
                f"{name} missing from the {arch} weights; is this a torchvision "
                f"{arch} state dict? It has {sorted(state_dict)[:6]}..."
            )
        value = np.asarray(state_dict[name], np.float32)
        if value.ndim != ndim:
            raise WeightsError(f"{name} has shape {value.shape}, expected {ndim} dimensions")
        return value

    features = {}
    channels = 3
    for layer in a.layers:
        if not isinstance(layer, Conv):
            continue
        w = get(f"features.{layer.torch_index}.weight", 4)  # (O, I, kh, kw)
        expected = (layer.features, channels, layer.kernel, layer.kernel)
        if w.shape != expected:
            raise WeightsError(
                f"features.{layer.torch_index}.weight has shape {w.shape}, expected {expected}"
            )
        features[f"conv_{layer.torch_index}"] = {
            "kernel": w.transpose(2, 3, 1, 0),  # (kh, kw, I, O)
            "bias": get(f"features.{layer.torch_index}.bias", 1),
        }
        channels = layer.features

    classifier = {}
    first, middle, last = a.classifier_indices
    w = get(f"classifier.{first}.weight", 2)  # (out, C * P * P), (C, H, W) order
    p = a.pool_size
    if w.shape[1] != channels * p * p:
        raise WeightsError(
            f"classifier.{first}.weight has {w.shape[1]} inputs, expected {channels * p * p}"
        )
    w = w.reshape(w.shape[0], channels, p, p).transpose(2, 3, 1, 0).reshape(p * p * channels, -1)
    classifier[f"fc_{first}"] = {"kernel": w, "bias": get(f"classifier.{first}.bias", 1)}
    classifier[f"fc_{middle}"] = {
        "kernel": get(f"classifier.{middle}.weight", 2).T,
        "bias": get(f"classifier.{middle}.bias", 1),
    }
    w_last = get(f"classifier.{last}.weight", 2)
    if w_last.shape[0] == num_classes:
        classifier[f"fc_{last}"] = {"kernel": w_last.T, "bias": get(f"classifier.{last}.bias", 1)}
    return {"features": features, "classifier": classifier}


def fetch_weights(
    arch: str, cache_dir: str | os.PathLike | None = None, *, timeout: float = 30.0
) -> pathlib.Path:
    """torchvision's published ImageNet weights for `arch`, downloaded once
    into the cache (default $MNIST_JAX_CACHE/weights) and hash-checked."""
    published = PUBLISHED[arch]
    cache = pathlib.Path(cache_dir) if cache_dir else sources.default_cache_dir() / "weights"
    target = cache / published.filename
    with caches.lock(cache, f"the {arch} weights"):  # One process downloads; others wait for it.
        if target.is_file() and idx.sha256_of(target).startswith(published.sha256_prefix):
            return target
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        idx.fetch_url(published.url, part, timeout=timeout, hint=OFFLINE_HINT)
        digest = idx.sha256_of(part)
        if not digest.startswith(published.sha256_prefix):
            part.unlink()
            raise WeightsError(
                f"downloaded {published.url} has sha256 {digest}, which does not start "
                f"with {published.sha256_prefix} as torchvision's file name says. " + OFFLINE_HINT
            )
        part.replace(target)
    return target
