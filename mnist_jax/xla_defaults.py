"""XLA options that make these models train faster on the CPU.

They are read once, when JAX starts its backends, so `mnist_jax` sets them
on import (its __init__), before anything runs; options the user already
put in XLA_FLAGS win. MNIST_JAX_XLA_DEFAULTS=0 turns this off.

Why (measured with `python -m experiments.benchmark --vs-torch`;
docs/performance.md): on XLA:CPU of jaxlib 0.10, YNNPACK takes reductions
and elementwise fusions as well as matrix products by default, and its
reductions are slow. Keeping YNNPACK for the matrix products only trains
the convolutional models much faster and leaves the ViT, made of matrix
products, as fast as before.
"""

from __future__ import annotations

import os
import sys
import warnings

# jaxlib versions these options were measured on; another version may not
# know them, and XLA aborts on a flag it does not know.
MEASURED_ON = ("0.10.",)
CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "dot"}


def with_defaults(xla_flags: str, jaxlib_version: str) -> str:
    """XLA_FLAGS with CPU_FLAGS added, unless already named or the jaxlib is another."""
    if not jaxlib_version.startswith(MEASURED_ON):
        return xla_flags
    added = [f"{name}={value}" for name, value in CPU_FLAGS.items() if name not in xla_flags]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply(environ=os.environ) -> None:
    """Adds CPU_FLAGS to environ["XLA_FLAGS"] (see the module docstring)."""
    if environ.get("MNIST_JAX_XLA_DEFAULTS", "1") == "0":
        return
    from jaxlib import version  # Imports no backend.

    flags = with_defaults(environ.get("XLA_FLAGS", ""), version.__version__)
    if flags == environ.get("XLA_FLAGS", ""):
        return
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            warnings.warn(
                "JAX started before mnist_jax was imported, so mnist_jax's faster XLA CPU "
                f"options ({flags}) do not apply; import mnist_jax first.",
                stacklevel=3,
            )
            return
    environ["XLA_FLAGS"] = flags
