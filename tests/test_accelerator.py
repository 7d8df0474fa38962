"""The accelerator check (python -m benchmarks.accelerator): its smoke form
on the CPU runs every part and writes the summary, its flags, and its
verdicts on the last H100 run's recorded files."""

import json
import subprocess
import sys

import pytest

from benchmarks import accelerator, accelerator_parts
from tests.conftest import ROOT


@pytest.mark.slow
def test_the_smoke_form_runs_every_part_and_writes_the_summary(tmp_path, real_source, real_mnist):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", "--smoke", "--out", str(tmp_path)]
        + real_source.flags,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] and summary["device"]["platform"] == "cpu"
    assert {"kind", "count", "jax", "jaxlib", "driver", "host", "commit"} <= set(summary["device"])
    rows = {row["part"]: row for row in summary["parts"]}
    assert list(rows) == [part.name for part in accelerator_parts.PARTS]
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "smoke")
    for name, row in rows.items():
        assert row["seconds"] > 0 and row["figure"] and (tmp_path / f"{name}.log").is_file()
        assert json.loads((tmp_path / f"{name}.json").read_text())  # What the part measured.
    table = (tmp_path / "summary.md").read_text()
    assert "| part | seconds | figure | goal | result |" in table
    assert all(f"| {name} |" in table for name in rows) and summary["device"]["commit"] in table


def test_a_bad_part_name_is_a_usage_error_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        accelerator.main(["--parts", "cnn,resnet"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "resnet" in error and "speedrun" in error


def test_the_list_names_every_part_with_its_limits_and_goal(capsys):
    accelerator.main(["--list"])
    out = capsys.readouterr().out
    for part in accelerator_parts.PARTS:
        assert f"| {part.name} | {part.what} | {part.seconds:g} | {part.smoke_seconds:g} |" in out
    assert accelerator_parts.by_name("vit,cnn") == tuple(
        p for p in accelerator_parts.PARTS if p.name in ("cnn", "vit")
    )  # In run order, whatever the order asked.


def test_the_last_h100_run_is_judged_against_the_goals():
    def recorded(name):
        return json.loads((ROOT / "results" / name).read_text())

    cnn = accelerator_parts.cnn_verdict(recorded("cnn_h100_seed0.json"))
    assert cnn.met is False and "7.83 s training" in cnn.figure and "compile 11.25 s" in cnn.where
    assert accelerator_parts.speedrun_verdict(recorded("speedrun_h100.json")).met is True
    versus = accelerator_parts.vs_torch_verdict(recorded("benchmark_vs_torch_h100.json"))
    assert versus.met is True and "3.75x (deep_cnn)" in versus.figure
    assert accelerator.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_the_tests_part_reads_pytests_last_line(tmp_path):
    tests = next(p for p in accelerator_parts.PARTS if p.name == "tests")
    log = "collected 116 items\n....F\n==== 1 failed, 115 passed in 61.20s ====\n"
    result = accelerator_parts.read_result(tests, tmp_path, tmp_path / "tests.json", log)
    assert accelerator_parts.tests_verdict(result).figure == "1 failed, 115 passed in 61.20s"
    with pytest.raises(ValueError):
        accelerator_parts.read_result(tests, tmp_path, tmp_path / "tests.json", "killed\n")
