"""Shared fixtures: synthetic data for unit tests, the real MNIST for data tests
(found by tests/real_data.py)."""

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from tests import real_data

ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("TQDM_DISABLE", "1")
CACHE_ROOT = pytest.StashKey[pathlib.Path]()


def synthetic_split(n: int, seed: int = 0):
    """Learnable fake digits: class k lights a 4x4 block in cell k of a 4x3 grid."""
    from mnist_jax.data import Split

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 2 + 8 * row : 8 + 8 * row, 2 + 7 * col : 7 + 7 * col] = 255
    return Split(images, labels)


def assert_runs_agree(a_history: list[dict], b_history: list[dict]) -> None:
    """Short runs of the same math in two different programs (device counts,
    data placement): epoch losses within what float32 rounding alone does
    to these runs.

    Over the 10-20 Adam steps of small_run_config on 300 examples, rounding
    is amplified about a thousandfold: changing every initial weight by one
    ulp, on one device, moved epoch 1's train loss by 5e-4 (relative),
    epoch 2's by up to 4.8e-3 and its validation loss by up to 5.3e-2, and
    validation accuracy by 14 points (2-core CPU, 3 random ulp patterns). So
    accuracies are not compared, and the losses get about twice that
    envelope: enough to catch a device training on the wrong share of a
    batch or a mean over the wrong count (a real partitioning bug moved
    epoch 2's train loss by 3.3e-2). One step is compared to rounding in
    tests/test_train.py and tests/test_parallel.py.
    """
    assert [h["epoch"] for h in a_history] == [h["epoch"] for h in b_history]
    for key, rtol in (("train_loss", 1e-2), ("val_loss", 1e-1)):
        np.testing.assert_allclose(
            [h[key] for h in a_history], [h[key] for h in b_history], rtol=rtol, err_msg=key
        )


def assert_weights_agree(a, b, *, max_move: float) -> None:
    """Parameter trees of two such runs: no weight further from its twin
    than `max_move`, what the runs' steps can move a weight. Adam moves one
    by about the learning rate a step whatever its gradient's size, so
    weights whose gradient is rounding noise (conv biases before batch
    norm) wander by up to that, and a quarter of the CNN's weights differ
    beyond 1e-5 after 10 steps. One step is compared to rounding in
    tests/test_train.py and tests/test_parallel.py."""
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=max_move), a, b)


def small_run_config(**overrides):
    """The CNN settings of the tests' short runs on 300 synthetic examples:
    10 steps an epoch (the last one padded), a checkpoint every 4, a log every 3."""
    from mnist_jax.config import TrainConfig
    from mnist_jax.pipeline import NoiseConfig

    defaults = dict(
        epochs=3,
        batch_size=32,
        eval_batch_size=50,
        checkpoint_every_steps=4,
        log_every_steps=3,
        noise=NoiseConfig("gaussian", 0.2),
    )
    return TrainConfig(**{**defaults, **overrides})


def plain_sgd_cnn(learning_rate: float, mesh):
    """small_run_config with plain SGD (no momentum, no weight decay: an
    update is the learning rate times the gradient), and a function giving
    the CNN's initial train state replicated on `mesh` (a fresh one each
    call: a train step donates its input's buffers). For the one-step
    comparisons of tests/test_train.py and tests/multidevice.py."""
    import jax.numpy as jnp

    from mnist_jax import models, optim, parallel, steps

    config = small_run_config(
        optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=learning_rate
    )

    def initial_state():
        return parallel.replicate(
            steps.create_train_state(
                models.get_model("cnn"),
                optim.make_optimizer(config),
                config.seed,
                jnp.zeros((1, 28, 28, 1)),
            ),
            mesh,
        )

    return config, initial_state


@pytest.fixture(scope="session")
def synthetic_splits():
    from mnist_jax.data import Splits

    return Splits(
        train=synthetic_split(300, 0), val=synthetic_split(100, 1), test=synthetic_split(100, 2)
    )


@pytest.fixture(scope="session")
def real_source() -> real_data.RealData:
    """Where the real MNIST is (tests/real_data.py). Fails (never skips) when
    it is nowhere: CI must run these tests."""
    try:
        return real_data.locate()
    except real_data.NotFound as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)  # Outside the except: the sentence alone, no traceback.


@pytest.fixture(scope="session")
def real_mnist(real_source):
    """The real MNIST, decoded into the session's cache: the commands the
    tests start with `real_source.flags` read it from there."""
    return real_source.load()


@pytest.fixture(scope="session")
def real_idx_files(real_source, real_mnist, tmp_path_factory) -> real_data.IdxFiles:
    """The four IDX files: the originals where they were found, else written
    from the real arrays."""
    from mnist_jax import idx

    if real_source.idx_dir is not None:
        originals = {stem: md5 for stem, _, md5 in idx.IDX_FILES.values()}
        return real_data.IdxFiles(real_source.idx_dir, originals)
    return real_data.write_idx_files(real_mnist, tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def real_tfds_dir(real_source, real_mnist, tmp_path_factory) -> pathlib.Path:
    """A tfds data dir holding MNIST 3.0.1: the one found, else one written
    from the real arrays."""
    if real_source.tfds_dir is not None:
        return real_source.tfds_dir
    return real_data.write_tfds(real_mnist, tmp_path_factory.mktemp("tfds"))


def _groups_ignored() -> bool:
    """pytest 9.2 reads a test's id from a field that pytest-xdist 3.8's
    --dist=loadgroup does not set, so it runs every group's tests anywhere."""
    from importlib.metadata import version

    def release(name):
        return tuple(int(part) for part in version(name).split(".")[:2])

    return release("pytest") >= (9, 2) and release("pytest-xdist") <= (3, 8)


def pytest_configure(config):
    """Fresh caches for the session, set before any test imports mnist_jax
    and inherited by the commands the tests start: an empty MNIST cache, so
    the tfds decoding path runs every time, and an empty compilation cache
    (mnist_jax.caches), so the many tests and commands that compile the same
    programs compile them once, in every session alike."""
    if hasattr(config, "workerinput"):
        return  # A pytest-xdist worker: it shares the caches its controller made (the environment).
    if config.getoption("dist", "no") == "loadgroup" and _groups_ignored():
        raise pytest.UsageError(
            "pytest >= 9.2 with pytest-xdist <= 3.8 ignores the test groups "
            "(every worker would train every shared fixture): pip install -e '.[test]' "
            "for the versions pyproject.toml pins"
        )
    # The user's own cache, where tests/real_data.py looks for MNIST's downloaded files.
    os.environ.setdefault(real_data.USER_CACHE, os.environ.get("MNIST_JAX_CACHE", ""))
    root = pathlib.Path(tempfile.mkdtemp(prefix="mnist-jax-tests-"))
    config.stash[CACHE_ROOT] = root
    os.environ["MNIST_JAX_CACHE"] = str(root / "cache")
    os.environ["MNIST_JAX_COMPILATION_CACHE"] = str(root / "jax")


def pytest_unconfigure(config):
    shutil.rmtree(config.stash.get(CACHE_ROOT, None) or "/nonexistent", ignore_errors=True)


# Module- and session-scoped fixtures that train: pytest-xdist's workers
# (pyproject.toml: --numprocesses=auto --dist=loadgroup) each build their
# own copy of a fixture, so every test of one of these runs on one worker.
TRAINING_FIXTURES = (
    "quick_runs",
    "runs",
    "trained_alone",
    "finished_sweep",
    "finished_run",
    "denoiser_state",
)


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the groups.
def pytest_collection_modifyitems(config, items):
    """Each test of a training fixture joins that fixture's worker group;
    the slow tests go first, so no worker is left alone with a long one at
    the end (the order is the same without pytest-xdist)."""
    for item in items:
        shared = [name for name in TRAINING_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def strict_ranks():
    import jax

    # Strict, as equinox tests: an accidental broadcast between ranks is a bug.
    jax.config.update("jax_numpy_rank_promotion", "raise")
    yield


class QuickRuns:
    """Each model experiment's --quick run with seed 0 (experiments.model_experiments),
    trained on first use and shared by the tests.

    Classifiers land in <root>/compare/<name>/seed0, where `python -m
    experiments.compare --train` puts seed 0, so compare finds them.
    """

    def __init__(self, root: pathlib.Path, data_flags: list[str]):
        self.root = root
        self.data_flags = data_flags
        self.runs: dict[str, dict] = {}

    def workdir(self, name: str) -> pathlib.Path:
        from experiments import classifier_experiments

        return (
            self.root
            / ("compare" if name in classifier_experiments() else "other")
            / name
            / "seed0"
        )

    def args(self, name: str) -> list[str]:
        return [
            "--quick",
            "--seed",
            "0",
            "--workdir",
            str(self.workdir(name)),
            *self.data_flags,
            "--no-progress",
        ]

    def get(self, name: str) -> dict:
        """{"summary", "out" (what it printed), "workdir"}."""
        import contextlib
        import importlib
        import io

        if name not in self.runs:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                summary = importlib.import_module(f"experiments.{name}").main(self.args(name))
            self.runs[name] = {
                "summary": summary,
                "out": out.getvalue(),
                "workdir": self.workdir(name),
            }
        return self.runs[name]


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory, real_source, real_mnist):
    return QuickRuns(tmp_path_factory.mktemp("runs"), real_source.flags)
