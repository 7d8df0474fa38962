"""Looking inside a trained model: conv feature maps, ViT attention, embeddings.

Each is a function of a train state and uint8 images (B, 28, 28, 1); the
pictures are drawn by mnist_jax.viz.

- Feature maps: the output of every convolution (nn.Conv, nn.ConvTranspose),
  captured with linen's `capture_intermediates`, so no model needs a hook.
- Attention: the ViT hands back its attention weights (`return_attention`);
  `attention_rollout` (Abnar & Zuidema 2020) follows the CLS token's
  attention through all layers down to the patches.
- Embeddings: every model sows one "embedding" (`self.sow("intermediates",
  "embedding", x)`): the classifiers' input to their last layer (the
  encoder's code for the encoder classifiers), the autoencoders' latent code.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mnist_jax import tasks
from mnist_jax.models import layers
from mnist_jax.tasks import StepConfig

EMBEDDING = "embedding"


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def clean_inputs(images, spec: StepConfig) -> jax.Array:
    """The model's clean (noise-free, normalised) inputs of uint8 images
    (B, H, W, 1); float inputs (cached features) pass unchanged."""
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images (B, H, W, C), got shape {images.shape}")
    return tasks.model_inputs(images, None, spec)[0]


def _apply(state, images, spec: StepConfig, **kwargs):
    """The model in inference mode on the clean inputs of `images`."""
    return state.apply_fn(_variables(state), clean_inputs(images, spec), train=False, **kwargs)


def _is_convolution(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and isinstance(module, layers.CONVOLUTIONS)


def feature_maps(state, images, spec: StepConfig = StepConfig()) -> dict[str, np.ndarray]:
    """{layer path: its output (B, h, w, C)} for every convolution, in the
    order the model calls them; outputs before the activation, as a PyTorch
    forward hook on the conv layer sees them."""
    paths = []  # Filled while tracing: jit's outputs would come back in sorted-key order.

    def convolution_outputs(state, images):
        _, variables = _apply(
            state, images, spec, capture_intermediates=_is_convolution, mutable=["intermediates"]
        )
        flat = traverse_util.flatten_dict(variables["intermediates"])
        # A captured call is stored under (..., module names, "__call__") as a
        # tuple of outputs; the sown embedding is not one of them.
        paths.extend(path for path in flat if path[-1] == "__call__")
        return [flat[path][0] for path in paths]

    outputs = jax.jit(convolution_outputs)(
        state, images
    )  # Traced anew: `paths` is filled every call.
    return {"/".join(path[:-1]): np.asarray(out, np.float32) for path, out in zip(paths, outputs)}


@functools.partial(jax.jit, static_argnames="spec")
def _attention(state, images, spec: StepConfig) -> jax.Array:
    return _apply(state, images, spec, return_attention=True)[1]


def attention_weights(state, images, spec: StepConfig = StepConfig()) -> np.ndarray:
    """The ViT's attention weights (B, depth, heads, T, T); token 0 is CLS."""
    try:
        return np.asarray(_attention(state, images, spec), np.float32)
    except TypeError as e:
        raise ValueError("attention maps need a model that returns its attention (the ViT)") from e


def attention_rollout(weights: np.ndarray) -> np.ndarray:
    """Attention rollout of one image's weights (depth, heads, T, T) -> (T, T).

    Each layer's head-averaged attention is mixed half and half with the
    identity (the residual connection), its rows renormalised, and the layers
    multiplied from the first up: row 0 says how much each token fed the CLS
    token's final state.
    """
    depth, _, tokens, _ = weights.shape
    rollout = np.eye(tokens)
    for layer in weights.astype(np.float64):
        mixed = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(tokens)  # (T, T)
        rollout = (mixed / mixed.sum(axis=-1, keepdims=True)) @ rollout
    return rollout


def _on_patch_grid(cls_row: np.ndarray) -> np.ndarray:
    """(..., P) values for the P patch tokens -> (..., g, g), P = g * g."""
    patches = cls_row.shape[-1]
    grid = int(round(np.sqrt(patches)))
    if grid * grid != patches:
        raise ValueError(f"{patches} patch tokens do not form a square grid")
    return cls_row.reshape(*cls_row.shape[:-1], grid, grid)


def cls_attention_maps(weights: np.ndarray) -> np.ndarray:
    """The CLS token's attention to the patches: (depth, heads, T, T) -> (depth, heads, g, g)."""
    return _on_patch_grid(weights[..., 0, 1:])


def rollout_map(weights: np.ndarray) -> np.ndarray:
    """attention_rollout's CLS row over the patch grid (g, g), summing to <= 1."""
    return _on_patch_grid(attention_rollout(weights)[0, 1:])


@functools.partial(jax.jit, static_argnames="spec")
def _embed(state, images, spec: StepConfig) -> jax.Array:
    _, variables = _apply(state, images, spec, mutable=["intermediates"])
    found = [
        v
        for path, v in traverse_util.flatten_dict(variables.get("intermediates", {})).items()
        if path[-1] == EMBEDDING
    ]
    if len(found) != 1:
        raise ValueError(f"the model sows {len(found)} {EMBEDDING!r} intermediates; expected one")
    embedding = found[0][0]
    return embedding.reshape(embedding.shape[0], -1).astype(jnp.float32)  # (B, D)


def embeddings(
    state, images: np.ndarray, spec: StepConfig = StepConfig(), batch_size: int = 500
) -> np.ndarray:
    """The model's embedding (N, D) of uint8 images (N, 28, 28, 1), computed
    in batches of one shape (the last one padded), so it compiles once."""
    images = np.asarray(images)
    batch_size = max(1, min(batch_size, len(images)))
    out = []
    for begin in range(0, len(images), batch_size):
        batch = images[begin : begin + batch_size]
        padded = np.concatenate(
            [batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)]
        )
        out.append(np.asarray(_embed(state, padded, spec))[: len(batch)])
    return np.concatenate(out)
