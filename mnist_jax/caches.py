"""Where mnist-jax keeps what it can rebuild, and JAX's compilation cache there.

    $MNIST_JAX_CACHE (default ~/.cache/mnist-jax)/
        mnist-<key>.npz   the decoded MNIST arrays (mnist_jax.sources)
        downloads/        the IDX files, where MNIST was downloaded
        weights/          pretrained VGG16/AlexNet weights (mnist_jax.pretrained)
        jax/              compiled XLA programs (below)

Whatever builds an entry (a download, a decoding) holds `lock(directory)`:
two processes started at once on an empty cache do the work once, and the
second reads what the first wrote.

JAX's persistent compilation cache is on by default (`enable_compilation_cache`,
called when mnist_jax is imported): the second run of a command loads its
train step, evaluation and initialisation programs instead of compiling them
again, which is most of what a short run waits for on a CPU. Results do not
change: a cached program is the very executable the compiler made.

- MNIST_JAX_COMPILATION_CACHE=0 turns it off; =DIR puts it in DIR.
- JAX's own settings win (JAX_COMPILATION_CACHE_DIR and the other
  jax_compilation_cache options, in the environment or jax.config).
- Two processes may share it: a size limit turns on JAX's LRU cache, whose
  reads and writes hold a file lock (the `filelock` package), so neither
  reads an entry the other is half-way through writing. The least recently
  used programs are deleted past MAX_BYTES.
- Anyone who can write to the cache directory can make this user's JAX
  processes run code (JAX's warning): keep it private, as ~/.cache is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib

log = logging.getLogger(__name__)

MAX_BYTES = 2 << 30  # 2 GiB; a CNN run's programs take a few MB.
# Programs that compile faster than this are not worth a file read: the
# per-operation ones of eager code. Train steps and evaluations take seconds.
MIN_COMPILE_SECONDS = 0.1


def cache_dir() -> pathlib.Path:
    """$MNIST_JAX_CACHE, else ~/.cache/mnist-jax."""
    return pathlib.Path(os.environ.get("MNIST_JAX_CACHE", "~/.cache/mnist-jax")).expanduser()


@contextlib.contextmanager
def lock(directory: pathlib.Path, what: str):
    """Holds `directory`/.lock while building `what` in it, across processes
    (released when the process ends, however it ends). Where the folder
    cannot take a lock file (read-only), nothing is locked: there is then
    nothing to build there either."""
    import filelock

    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = filelock.FileLock(directory / ".lock")
        try:
            held.acquire(timeout=0)
        except filelock.Timeout:
            log.info("Waiting for another process building %s in %s", what, directory)
            held.acquire()
    except OSError as e:
        log.debug("No lock in %s (%s)", directory, e)
        yield
        return
    try:
        yield
    finally:
        held.release()


def compilation_cache_dir(environ=os.environ) -> pathlib.Path | None:
    """Where compiled programs go: None when MNIST_JAX_COMPILATION_CACHE is 0."""
    setting = environ.get("MNIST_JAX_COMPILATION_CACHE", "").strip()
    if setting == "0":
        return None
    return pathlib.Path(setting).expanduser() if setting else cache_dir() / "jax"


def enable_compilation_cache(environ=os.environ) -> pathlib.Path | None:
    """Turns JAX's persistent compilation cache on (see the module
    docstring); returns its directory, or None where it stays off (turned
    off, set up by the user through JAX, or a directory that cannot be made)."""
    import jax

    directory = compilation_cache_dir(environ)
    if directory is None or jax.config.jax_compilation_cache_dir is not None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning(
            "JAX's compilation cache stays off: cannot create %s (%s). Set "
            "MNIST_JAX_COMPILATION_CACHE to a writable folder, or to 0.",
            directory,
            e,
        )
        return None
    defaults = {
        "jax_compilation_cache_max_size": -1,
        "jax_persistent_cache_min_compile_time_secs": 1.0,
    }
    ours = {
        "jax_compilation_cache_max_size": MAX_BYTES,
        "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS,
    }
    for name, value in ours.items():
        if getattr(jax.config, name) == defaults[name]:  # Not set by the user.
            jax.config.update(name, value)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory
