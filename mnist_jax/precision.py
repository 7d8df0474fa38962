"""Mixed precision: compute in bfloat16, keep parameters and losses in float32.

The master parameters and the optimizer state stay float32. Each step casts
a bfloat16 copy of the parameters and inputs for the forward and backward
passes (the cast's gradient comes back as float32), and casts the model's
outputs to float32 before the loss. Batch-norm and layer-norm statistics are
reduced in float32 by Flax itself. This is the jmp-style policy
(param float32, compute bfloat16, output float32), applied around any model
rather than threaded through each module's `dtype` field.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_dtype(name: str) -> None:
    if name not in DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {tuple(DTYPES)}")


def _cast_floating(tree: Any, dtype) -> Any:
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def to_compute(tree: Any, name: str) -> Any:
    """Floating arrays of `tree` in the compute dtype; untouched for float32."""
    if name == "float32":
        return tree  # No casts at all: float32 programs stay exactly as they were.
    return _cast_floating(tree, DTYPES[name])


def to_float32(tree: Any, name: str) -> Any:
    """Model outputs back in float32, for the loss and metrics."""
    if name == "float32":
        return tree
    return _cast_floating(tree, jnp.float32)
