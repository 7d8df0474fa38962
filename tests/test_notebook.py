"""The Colab notebook: valid nbformat-4 JSON, and its code cells run on CPU with --quick."""

import json
import os
import pathlib
import shlex
import signal

import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "experiments" / "colab.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return json.loads(NOTEBOOK.read_text())


def source(cell) -> str:
    return "".join(cell["source"])


def test_notebook_is_clean_nbformat_4(notebook):
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert (
                cell["outputs"] == [] and cell["execution_count"] is None
            )  # Committed without outputs.
            compile(source(cell), NOTEBOOK.name, "exec")  # Plain Python: no shell lines or magics.
    assert [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]


def test_notebook_asks_for_the_repository_first_and_opens_tensorboard_before_training(notebook):
    code = [source(c) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert (
        code[0].startswith("# @title Settings")
        and 'REPO_URL = ""' in code[0]
        and 'DATA = ""' in code[0]
    )
    board = next(i for i, c in enumerate(code) if "notebook.start" in c)
    training = next(i for i, c in enumerate(code) if "experiment.main(" in c)
    assert board < training  # Watched while it trains.
    text = " ".join(source(c) for c in notebook["cells"] if c["cell_type"] == "markdown")
    assert "needs no restart" not in text and "Restart session" in text


@pytest.mark.slow
def test_notebook_code_cells_run_on_cpu(
    notebook, real_source, real_mnist, tmp_path, monkeypatch, capsys
):
    """Runs every code cell in order in one namespace, as a kernel would; after
    the cell tagged "parameters", --quick and the local data are injected (as
    papermill does). The install cell finds mnist_jax installed and skips."""
    from tensorboard import manager

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    before = {info.pid for info in manager.get_all()}
    try:
        for cell in notebook["cells"]:
            if cell["cell_type"] != "code":
                continue
            exec(compile(source(cell), NOTEBOOK.name, "exec"), namespace)
            if "parameters" in cell["metadata"].get("tags", []):
                # The quickest experiment: the notebook's code is what is tested here.
                namespace["EXPERIMENT"] = "linear_ae"
                namespace["FLAGS"] = shlex.join(["--quick", "--no-progress", *real_source.flags])
        out = capsys.readouterr().out
        started = [info for info in manager.get_all() if info.pid not in before]
    finally:
        for info in manager.get_all():
            if info.pid not in before:
                os.kill(info.pid, signal.SIGTERM)
    assert "backend cpu" in out and "No accelerator" in out
    assert "| report (" in out  # The experiment's closing table.
    summary = namespace["summary"]
    assert summary["experiment"] == namespace["EXPERIMENT"] == "linear_ae"
    assert summary["devices"]["platform"] == "cpu"
    assert len(list(pathlib.Path("runs/linear_ae").glob("*/metrics.json"))) == 1
    assert (
        len(started) == 1
        and pathlib.Path(started[0].logdir).resolve() == (tmp_path / "runs").resolve()
    )
