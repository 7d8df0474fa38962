"""The caches processes share: JAX's compilation cache and the MNIST cache
(mnist_jax.caches), each started by two processes at once."""

import json
import os
import subprocess
import sys

import jax

from mnist_jax import caches
from tests.conftest import ROOT

COMPILE = """
import json, sys
import numpy as np
import mnist_jax, jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))
value = f(np.arange(4096.0, dtype=np.float32).reshape(64, 64) / 4096).tolist()  # One program: f.
print(json.dumps({"value": value, "hits": hits.count("/jax/compilation_cache/cache_hits"),
                  "dir": jax.config.jax_compilation_cache_dir}))
"""


def start(code: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out, err


def test_where_the_compilation_cache_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_JAX_CACHE", str(tmp_path / "root"))
    assert caches.compilation_cache_dir({}) == tmp_path / "root" / "jax"
    assert (
        caches.compilation_cache_dir({"MNIST_JAX_COMPILATION_CACHE": str(tmp_path / "c")})
        == tmp_path / "c"
    )
    assert caches.compilation_cache_dir({"MNIST_JAX_COMPILATION_CACHE": "0"}) is None


def test_this_session_compiles_into_its_own_cache():
    # conftest.py points it at the session's folder before mnist_jax is imported.
    assert jax.config.jax_compilation_cache_dir == os.environ["MNIST_JAX_COMPILATION_CACHE"]
    assert (
        jax.config.jax_compilation_cache_max_size == caches.MAX_BYTES
    )  # The LRU cache, with its lock.
    assert jax.config.jax_persistent_cache_min_compile_time_secs == caches.MIN_COMPILE_SECONDS


def test_two_processes_share_an_empty_compilation_cache(tmp_path):
    """Started together, both compile and write, neither reads half an entry;
    the next process finds the program cached; =0 turns the cache off."""
    env = {
        **os.environ,
        "MNIST_JAX_COMPILATION_CACHE": str(tmp_path / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }  # Cache even this small program.
    together = [start(COMPILE, env), start(COMPILE, env)]
    results = []
    for process in together:
        out, err = finish(process)
        assert "persistent compilation cache" not in err, err  # JAX's read and write errors say so.
        results.append(json.loads(out))
    assert results[0]["value"] == results[1]["value"] and results[0]["dir"] == str(tmp_path / "jax")
    assert len(list((tmp_path / "jax").glob("jit_*-cache"))) == 1
    out, _ = finish(start(COMPILE, env))
    after = json.loads(out)
    assert after["hits"] == 1 and after["value"] == results[0]["value"]

    off = {**env, "MNIST_JAX_COMPILATION_CACHE": "0", "MNIST_JAX_CACHE": str(tmp_path / "root")}
    out, _ = finish(start(COMPILE, off))
    assert json.loads(out)["dir"] is None and not (tmp_path / "root").exists()


def test_the_compilation_cache_stays_off_where_it_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    env = {**os.environ, "MNIST_JAX_COMPILATION_CACHE": str(tmp_path / "file" / "jax")}
    out, err = finish(start(COMPILE, env))
    assert (
        json.loads(out)["dir"] is None
        and "stays off" in err
        and "MNIST_JAX_COMPILATION_CACHE" in err
    )
