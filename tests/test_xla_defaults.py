"""The XLA CPU options mnist_jax sets on import (mnist_jax.xla_defaults)."""

import os
import subprocess
import sys

import pytest

from mnist_jax import xla_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_the_cpu_options_are_added_to_what_the_user_set():
    flags = xla_defaults.with_defaults("--xla_force_host_platform_device_count=8", "0.10.2")
    assert flags == f"--xla_force_host_platform_device_count=8 {FLAG}=dot"


def test_an_option_the_user_named_is_left_as_it_is():
    assert xla_defaults.with_defaults(f"{FLAG}=dot,eltwise", "0.10.2") == f"{FLAG}=dot,eltwise"


def test_another_jaxlib_gets_nothing_it_might_not_know():
    assert xla_defaults.with_defaults("", "0.11.2") == ""


@pytest.mark.slow
def test_importing_mnist_jax_sets_them_before_jax_starts_and_can_be_turned_off():
    code = "import os, mnist_jax, jax; jax.numpy.ones(1); print(os.environ.get('XLA_FLAGS', ''))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    on = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert f"{FLAG}=dot" in on.stdout
    off = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MNIST_JAX_XLA_DEFAULTS": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert FLAG not in off.stdout
