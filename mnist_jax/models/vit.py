"""A Vision Transformer from scratch (report 004, Part 2)."""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models import register
from mnist_jax.models.initializers import torch_kernel_init
from mnist_jax.models.layers import Dropout

_embedding_init = nn.initializers.truncated_normal(0.02)


class SelfAttention(nn.Module):
    """Multi-head self-attention that can hand back its weights."""

    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        """x: (B, T, D) -> ((B, T, D), attention weights (B, H, T, T))."""
        batch, tokens, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads
        qkv = nn.Dense(3 * dim, kernel_init=torch_kernel_init, name="qkv")(x)  # (B, T, 3D)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh) each
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
        weights = jax.nn.softmax(logits, axis=-1)  # (B, H, T, T)
        attended = jnp.einsum(
            "bhqk,bkhd->bqhd", Dropout(self.dropout, deterministic=not train)(weights), v
        ).reshape(batch, tokens, dim)
        out = nn.Dense(dim, kernel_init=torch_kernel_init, name="proj")(attended)
        return Dropout(self.dropout, deterministic=not train)(out), weights


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MSA(LN(x)), then x + MLP(LN(x)) with GELU."""

    num_heads: int
    mlp_ratio: float
    dropout: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        dim = x.shape[-1]
        attended, weights = SelfAttention(self.num_heads, self.dropout)(
            nn.LayerNorm()(x), train=train
        )
        x = x + attended
        h = nn.Dense(int(dim * self.mlp_ratio), kernel_init=torch_kernel_init)(nn.LayerNorm()(x))
        h = Dropout(self.dropout, deterministic=not train)(nn.gelu(h, approximate=False))
        h = nn.Dense(dim, kernel_init=torch_kernel_init)(h)
        return x + Dropout(self.dropout, deterministic=not train)(h), weights


@register("vit")
class ViT(nn.Module):
    """4x4 patches (49 of them) -> dim 128, a CLS token and learned positions,
    6 pre-norm blocks of 8 heads (MLP ratio 4, dropout 0.1), LayerNorm ->
    Linear on the CLS token. 1,199,882 parameters.
    """

    dropout_fields: ClassVar[tuple[str, ...]] = ("dropout",)

    patch_size: int = 4
    dim: int = 128
    depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool, return_attention: bool = False):
        """x: (B, 28, 28, 1) normalised images -> logits (B, 10); with
        `return_attention`, also the attention weights (B, depth, heads, 50, 50),
        token 0 being the CLS token."""
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"image size {x.shape[1:3]} is not divisible by patch_size {p}")
        x = nn.Conv(
            self.dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=torch_kernel_init,
            name="patch_embed",
        )(x)  # (B, 7, 7, D)
        x = x.reshape(x.shape[0], -1, self.dim)  # (B, 49, D)
        cls = self.param("cls_token", _embedding_init, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        x = x + self.param("pos_embedding", _embedding_init, (1, x.shape[1], self.dim))
        x = Dropout(self.dropout, deterministic=not train)(x)  # (B, 50, D)
        attention = []
        for _ in range(self.depth):
            x, weights = TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout)(
                x, train=train
            )
            attention.append(weights)
        cls = nn.LayerNorm()(x[:, 0])  # (B, D)
        self.sow("intermediates", "embedding", cls)  # For mnist_jax.inspection.
        logits = nn.Dense(self.num_classes, kernel_init=torch_kernel_init, name="head")(
            cls
        )  # (B, 10)
        if return_attention:
            return logits, jnp.stack(attention, axis=1)  # (B, depth, H, 50, 50)
        return logits
