"""Our models' variables <-> the state dicts of mnist_jax.torch_models, in numpy.

Each exportable model has a layout: one `Tensor` per PyTorch state-dict
entry, naming the Flax variable it holds and how its layout differs:

- conv kernels (kh, kw, in, out) -> PyTorch's (out, in, kh, kw);
- transposed-conv kernels (flax's ConvTranspose without transpose_kernel,
  which does not flip) -> PyTorch's (in, out, kh, kw), spatially flipped;
- dense kernels (in, out) -> Linear weights (out, in);
- a Linear after a flatten: Flax flattens (H, W, C), PyTorch (C, H, W),
  so its input columns are reordered; a Linear before an unflatten
  (report 003's decoder) has its output rows and bias reordered;
- batch norm: scale, bias -> weight, bias; the running mean and (biased)
  variance -> running_mean, running_var; num_batches_tracked, which Flax
  does not keep, is written as the run's step count and dropped on reading;
- LayerNorm: scale -> weight.

No torch here: the conversion is reshapes and transposes, exact both ways.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np


class LayoutError(Exception):
    """A state dict or a variable tree that does not fit the model's layout."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    torch_name: str  # "conv1.weight"
    collection: str  # "params" or "batch_stats"; "" for num_batches_tracked (no Flax variable).
    path: tuple[str, ...]  # ("ConvBlock_0", "Conv_0", "kernel")
    kind: str = "same"  # conv, deconv, linear, from_map, to_map, to_map_bias, count or same
    map_shape: tuple[int, int, int] = (0, 0, 0)  # (H, W, C) of the flattened map


def _to_torch(t: Tensor, x: np.ndarray) -> np.ndarray:
    h, w, c = t.map_shape
    if t.kind == "conv":
        return x.transpose(3, 2, 0, 1)  # (kh, kw, I, O) -> (O, I, kh, kw)
    if t.kind == "deconv":
        return x[::-1, ::-1].transpose(2, 3, 0, 1)  # (kh, kw, I, O) -> (I, O, kh, kw), flipped
    if t.kind == "linear":
        return x.T  # (in, out) -> (out, in)
    if t.kind == "from_map":  # (H*W*C, out) -> (out, C*H*W)
        return x.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(x.shape[1], -1)
    if t.kind == "to_map":  # (in, H*W*C) -> (C*H*W, in)
        return x.reshape(-1, h, w, c).transpose(3, 1, 2, 0).reshape(-1, x.shape[0])
    if t.kind == "to_map_bias":  # (H*W*C,) -> (C*H*W,)
        return x.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    return x


def _from_torch(t: Tensor, x: np.ndarray) -> np.ndarray:
    h, w, c = t.map_shape
    if t.kind == "conv":
        return x.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
    if t.kind == "deconv":
        return x.transpose(2, 3, 0, 1)[::-1, ::-1]  # (I, O, kh, kw) -> (kh, kw, I, O), flipped
    if t.kind == "linear":
        return x.T
    if t.kind == "from_map":  # (out, C*H*W) -> (H*W*C, out)
        return x.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(-1, x.shape[0])
    if t.kind == "to_map":  # (C*H*W, in) -> (in, H*W*C)
        return x.reshape(c, h, w, -1).transpose(3, 1, 2, 0).reshape(x.shape[1], -1)
    if t.kind == "to_map_bias":  # (C*H*W,) -> (H*W*C,)
        return x.reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    return x


# --- Layers: the Tensors of one PyTorch module. -----------------------------


def conv(name: str, *path: str, kind: str = "conv") -> list[Tensor]:
    return [
        Tensor(f"{name}.weight", "params", (*path, "kernel"), kind),
        Tensor(f"{name}.bias", "params", (*path, "bias")),
    ]


def linear(name: str, *path: str, from_map=None, to_map=None) -> list[Tensor]:
    if from_map:
        return [
            Tensor(f"{name}.weight", "params", (*path, "kernel"), "from_map", from_map),
            Tensor(f"{name}.bias", "params", (*path, "bias")),
        ]
    if to_map:
        return [
            Tensor(f"{name}.weight", "params", (*path, "kernel"), "to_map", to_map),
            Tensor(f"{name}.bias", "params", (*path, "bias"), "to_map_bias", to_map),
        ]
    return [
        Tensor(f"{name}.weight", "params", (*path, "kernel"), "linear"),
        Tensor(f"{name}.bias", "params", (*path, "bias")),
    ]


def batch_norm(name: str, *path: str) -> list[Tensor]:
    return [
        Tensor(f"{name}.weight", "params", (*path, "scale")),
        Tensor(f"{name}.bias", "params", (*path, "bias")),
        Tensor(f"{name}.running_mean", "batch_stats", (*path, "mean")),
        Tensor(f"{name}.running_var", "batch_stats", (*path, "var")),
        Tensor(f"{name}.num_batches_tracked", "", (), "count"),
    ]


def layer_norm(name: str, *path: str) -> list[Tensor]:
    return [
        Tensor(f"{name}.weight", "params", (*path, "scale")),
        Tensor(f"{name}.bias", "params", (*path, "bias")),
    ]


def _shape(params: Mapping, *path: str) -> tuple[int, ...]:
    node = params
    for key in path:
        if key not in node:
            raise LayoutError(f"the model has no parameter {'/'.join(path)}")
        node = node[key]
    return tuple(node.shape)


def _square_map(params: Mapping, dense: str, channels: int, *scope: str) -> tuple[int, int, int]:
    """(H, W, C) of the square map that `dense`'s kernel reads flattened."""
    rows = _shape(params, *scope, dense, "kernel")[0]
    side = math.isqrt(rows // channels)
    return side, side, channels


# --- The models (their names in mnist_jax.models). --------------------------


def _conv_bn_blocks(block: str, count: int) -> list[Tensor]:
    """conv1, bn1, ... conv{count}, bn{count}: the Conv_0 and BatchNorm_0 of
    `block`_0 ... `block`_{count - 1}."""
    out = []
    for i in range(count):
        out += conv(f"conv{i + 1}", f"{block}_{i}", "Conv_0")
        out += batch_norm(f"bn{i + 1}", f"{block}_{i}", "BatchNorm_0")
    return out


def _cnn(params: Mapping) -> list[Tensor]:
    channels = _shape(params, "ConvBlock_2", "Conv_0", "kernel")[-1]
    return [
        *_conv_bn_blocks("ConvBlock", 3),
        *linear("fc1", "Dense_0", from_map=_square_map(params, "Dense_0", channels)),
        *linear("fc2", "Dense_1"),
        *linear("fc3", "Dense_2"),
    ]


def _simple_cnn(params: Mapping) -> list[Tensor]:
    channels = _shape(params, "Conv_1", "kernel")[-1]
    return [
        *conv("conv1", "Conv_0"),
        *conv("conv2", "Conv_1"),
        *linear("fc", "Dense_0", from_map=_square_map(params, "Dense_0", channels)),
    ]


def _deep_cnn(params: Mapping) -> list[Tensor]:
    channels = _shape(params, "ConvBNReLU_5", "Conv_0", "kernel")[-1]
    return [
        *_conv_bn_blocks("ConvBNReLU", 6),
        *linear("fc1", "Dense_0", from_map=_square_map(params, "Dense_0", channels)),
        *linear("fc2", "Dense_1"),
    ]


def _vit(params: Mapping) -> list[Tensor]:
    out = [
        *conv("patch_embed", "patch_embed"),
        Tensor("cls_token", "params", ("cls_token",)),
        Tensor("pos_embedding", "params", ("pos_embedding",)),
    ]
    depth = sum(1 for k in params if k.startswith("TransformerBlock_"))
    for i in range(depth):
        block, name = f"TransformerBlock_{i}", f"blocks.{i}"
        out += layer_norm(f"{name}.norm1", block, "LayerNorm_0")
        out += linear(f"{name}.attn.qkv", block, "SelfAttention_0", "qkv")
        out += linear(f"{name}.attn.proj", block, "SelfAttention_0", "proj")
        out += layer_norm(f"{name}.norm2", block, "LayerNorm_1")
        out += linear(f"{name}.mlp.fc1", block, "Dense_0")
        out += linear(f"{name}.mlp.fc2", block, "Dense_1")
    return out + layer_norm("norm", "LayerNorm_0") + linear("head", "head")


def _linear_ae(params: Mapping) -> list[Tensor]:
    return linear("encoder", "encoder") + linear("decoder", "decoder")


def _conv_ae(params: Mapping) -> list[Tensor]:
    channels = _shape(params, "encoder", "Conv_2", "kernel")[-1]
    latent_map = _square_map(params, "Dense_0", channels, "encoder")
    return [
        *conv("encoder.conv1", "encoder", "Conv_0"),
        *conv("encoder.conv2", "encoder", "Conv_1"),
        *conv("encoder.conv3", "encoder", "Conv_2"),
        *linear("encoder.fc", "encoder", "Dense_0", from_map=latent_map),
        *linear("decoder.fc", "decoder", "Dense_0", to_map=latent_map),
        *conv("decoder.deconv1", "decoder", "ConvTranspose_0", kind="deconv"),
        *conv("decoder.deconv2", "decoder", "ConvTranspose_1", kind="deconv"),
        *conv("decoder.deconv3", "decoder", "ConvTranspose_2", kind="deconv"),
    ]


def _denoising_ae(params: Mapping) -> list[Tensor]:
    return [
        *conv("conv1", "Conv_0"),
        *conv("conv2", "Conv_1"),
        *conv("deconv1", "ConvTranspose_0", kind="deconv"),
        *conv("deconv2", "ConvTranspose_1", kind="deconv"),
    ]


# Model name -> its layout, built from the model's params (for the shapes
# that sizes of the flattened maps follow from).
LAYOUTS: dict[str, Callable[[Mapping], list[Tensor]]] = {
    "cnn": _cnn,
    "simple_cnn": _simple_cnn,
    "deep_cnn": _deep_cnn,
    "vit": _vit,
    "linear_ae": _linear_ae,
    "conv_ae": _conv_ae,
    "denoising_ae": _denoising_ae,
}


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def layout(model: str, variables: Mapping) -> list[Tensor]:
    """The model's Tensors, checked to cover every variable of `variables`
    ({"params", "batch_stats"}, arrays or shapes) exactly once."""
    tensors = LAYOUTS[model](variables["params"])
    covered = {(t.collection, *t.path) for t in tensors if t.collection}
    present = {
        (collection, *path)
        for collection in ("params", "batch_stats")
        for path in _leaves(variables.get(collection, {}))
    }
    if present - covered:
        extra = "/".join(sorted(present - covered)[0])
        raise LayoutError(
            f"the {model} model has {extra}, which mnist_jax.torch_models' definition lacks "
            "(a model with other layers than the report's)"
        )
    if covered - present:
        missing = "/".join(sorted(covered - present)[0])
        raise LayoutError(f"the {model} model lacks {missing}, which the layout expects")
    return tensors


def to_state_dict(model: str, variables: Mapping, step: int = 0) -> dict[str, np.ndarray]:
    """Flax {"params", "batch_stats"} -> {PyTorch name: contiguous numpy array};
    num_batches_tracked = `step` (int64)."""
    leaves = {c: _leaves(variables.get(c, {})) for c in ("params", "batch_stats")}
    out = {}
    for t in layout(model, variables):
        if t.kind == "count":
            out[t.torch_name] = np.asarray(step, np.int64)
        else:
            value = np.asarray(leaves[t.collection][t.path])
            out[t.torch_name] = np.ascontiguousarray(_to_torch(t, value))
    return out


def from_state_dict(model: str, state_dict: Mapping, shapes: Mapping) -> dict:
    """{PyTorch name: array} -> Flax {"params", "batch_stats"} of the model
    whose variables have `shapes` (e.g. jax.eval_shape of its init).

    Raises LayoutError naming the first missing or unexpected key, or the
    first tensor of the wrong shape.
    """
    tensors = layout(model, shapes)
    expected = {t.torch_name for t in tensors}
    if missing := sorted(expected - set(state_dict)):
        raise LayoutError(
            f"the state dict lacks {missing[0]} ({len(missing)} of the {model} model's "
            f"{len(expected)} keys missing)"
        )
    if unexpected := sorted(set(state_dict) - expected):
        raise LayoutError(f"the state dict has {unexpected[0]}, which the {model} model lacks")
    leaves = {c: _leaves(shapes.get(c, {})) for c in ("params", "batch_stats")}
    variables: dict = {"params": {}, "batch_stats": {}}
    for t in tensors:
        value = np.asarray(state_dict[t.torch_name])
        if t.kind == "count":
            continue
        want = leaves[t.collection][t.path]
        torch_shape = _to_torch(t, np.zeros(want.shape, np.float32)).shape
        if value.shape != torch_shape:
            raise LayoutError(
                f"{t.torch_name} has shape {value.shape}, the {model} model expects {torch_shape}"
            )
        node = variables[t.collection]
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = np.ascontiguousarray(_from_torch(t, value)).astype(want.dtype)
    return variables
