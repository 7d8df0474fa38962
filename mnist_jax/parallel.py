"""Data parallelism with `jax.sharding`: one mesh over every device.

Every run builds a one-axis mesh, `("data",)`, over all devices of all
processes. Batches are split along their first (batch) axis across it;
parameters, optimizer state and batch-norm statistics are replicated. The
jitted steps declare these shardings, and XLA inserts the gradient all-reduce
itself, so the same code runs on 1 CPU, 8 TPU cores or several hosts.

Losses, metrics and batch-norm statistics are means over the global batch,
so the numbers do not depend on the device count (to float rounding), and
random numbers do not either: `jax_threefry_partitionable` (on by default)
draws the same noise and dropout masks whatever the sharding.

Multi-host: every process holds the whole (small) dataset and computes the
same global batch; each builds the global array from the shards its own
devices hold (`jax.make_array_from_callback`).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mnist_jax import onednn

DATA_AXIS = "data"

# Setting this to 1 makes every entry point call jax.distributed.initialize().
DISTRIBUTED_ENV = "MNIST_JAX_DISTRIBUTED"

log = logging.getLogger(__name__)


class BatchSizeError(ValueError):
    """A batch that does not split evenly across the devices."""


def distributed_requested(environ=os.environ) -> bool:
    """Whether the environment asks for multi-process JAX.

    Yes when MNIST_JAX_DISTRIBUTED=1, or when JAX_COORDINATOR_ADDRESS is set
    (the variable `jax.distributed.initialize` reads itself).
    """
    flag = environ.get(DISTRIBUTED_ENV, "").strip().lower()
    if flag not in ("", "0", "1", "true", "false"):
        raise ValueError(
            f"{DISTRIBUTED_ENV}={environ[DISTRIBUTED_ENV]!r}: set it to 1 (multi-process) or 0"
        )
    return flag in ("1", "true") or bool(environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize_distributed(environ=os.environ) -> bool:
    """Calls `jax.distributed.initialize()` when the environment asks for it.

    On a Cloud TPU pod slice, SLURM or Open MPI every argument is detected;
    elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. Must run before anything else
    touches JAX. Returns whether it initialised.
    """
    if not distributed_requested(environ):
        return False
    kwargs = {}
    for name, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if environ.get(env):
            try:
                kwargs[name] = int(environ[env])
            except ValueError:
                raise ValueError(f"{env}={environ[env]!r} is not an integer") from None
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ("data") mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    # Mesh (not jax.make_mesh, whose axes default to Explicit) keeps the
    # "Auto" axis type: jit propagates the shardings it is given.
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split across the mesh's devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def num_shards(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def nearest_multiples(value: int, divisor: int) -> list[int]:
    """The multiples of `divisor` just below and above `value` (positive only)."""
    below = value // divisor * divisor
    return [m for m in (below, below + divisor) if m > 0]


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises BatchSizeError, naming valid sizes, unless `batch_size` splits evenly."""
    devices = num_shards(mesh)
    if batch_size % devices:
        valid = " or ".join(map(str, nearest_multiples(batch_size, devices)))
        raise BatchSizeError(
            f"the {what} {batch_size} does not split across {devices} devices: "
            f"it must be a multiple of {devices}. Use {valid} "
            f"(e.g. --batch-size {valid.split()[0]})."
        )


def round_up(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count >= batch_size (evaluation
    batches are padded and masked, so their size never changes a number)."""
    devices = num_shards(mesh)
    return -(-batch_size // devices) * devices


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value  # Already in place: no copy.
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    # Several processes: each holds the same host value and fills in the
    # shards of its own devices.
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array of `tree` whole on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Splits every array of `batch` along its leading axis across the mesh."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: _global_array(x, sharding), batch)


def describe(mesh: Mesh) -> dict:
    """The devices a run uses, for metrics.json and the console."""
    devices = list(mesh.devices.flat)
    return {
        "count": len(devices),
        "platform": devices[0].platform,
        "kinds": sorted({d.device_kind for d in devices}),
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape),
        "host": host_cpu(),
        "convolutions": "oneDNN"
        if onednn.enabled()
        else "XLA",  # The path the models' conv2d takes.
    }


def host_cpu() -> str:
    """This machine's CPU: core count and model name, e.g. "2-core AMD EPYC"
    (from /proc/cpuinfo on Linux, else the platform's name for it)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{os.cpu_count()}-core {names[0]}"
    except (OSError, IndexError):
        return f"{os.cpu_count()}-core {platform.processor() or platform.machine()}"


def format_devices(info: dict) -> str:
    """e.g. "8 x tpu (TPU v2), 1 process, mesh data=8"; CPU devices are named
    by the host's CPU, and oneDNN's convolutions where they run:
    "1 x cpu (2-core AMD EPYC), 1 process, mesh data=1, oneDNN convolutions"."""
    processes = info["processes"]
    mesh = ", ".join(f"{k}={v}" for k, v in info["mesh"].items())
    kinds = [info["host"]] if info["platform"] == "cpu" and "host" in info else info["kinds"]
    return (
        f"{info['count']} x {info['platform']} ({', '.join(kinds)}), "
        f"{processes} process{'es' if processes > 1 else ''}, mesh {mesh}"
        + (", oneDNN convolutions" if info.get("convolutions") == "oneDNN" else "")
    )


def is_main_process() -> bool:
    """Process 0 writes files (metrics, figures, TensorBoard); every process saves checkpoints."""
    return jax.process_index() == 0


def steps_sharded(mesh: Mesh, leading: int = 1) -> NamedSharding:
    """(steps, batch) arrays: every step's batch axis split across the mesh.
    leading: axes before the batch axis, e.g. 2 for (steps, trials, batch)."""
    return NamedSharding(mesh, P(*([None] * leading), DATA_AXIS))


def shard_steps(tree: Any, mesh: Mesh, leading: int = 1) -> Any:
    """Places (steps, batch, ...) arrays with their batch axis split across
    the mesh; `leading` axes come before it (steps_sharded)."""
    sharding = steps_sharded(mesh, leading)
    return jax.tree.map(lambda x: _global_array(x, sharding), tree)


# For a device that reports no memory limit: the largest dataset kept on it.
FALLBACK_DATA_BUDGET_BYTES = 2 << 30


def fits_on_devices(nbytes: int, mesh: Mesh, fraction: float = 0.25) -> bool:
    """Whether a replicated dataset of `nbytes` fits in `fraction` of one
    device's memory (the rest is for parameters and activations)."""
    try:
        stats = mesh.devices.flat[0].memory_stats() or {}
    except Exception:  # Not every backend reports memory.
        stats = {}
    limit = stats.get("bytes_limit")
    return nbytes <= (fraction * limit if limit else FALLBACK_DATA_BUDGET_BYTES)
