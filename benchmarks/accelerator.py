"""The accelerator check: one command that proves the GPU (or TPU) path, part by part.

    python -m benchmarks.accelerator                   # every part, on the accelerator JAX finds
    python -m benchmarks.accelerator --parts cnn,speedrun
    python -m benchmarks.accelerator --smoke           # every part in its smallest form (CPU too)
    python -m benchmarks.accelerator --list            # the parts, their limits and goals

Each part (benchmarks.accelerator_parts) runs as a process of its own with
its own time limit: a part past it is killed ("timeout"), a failing part
("error", or "fail" where it missed its goal) stops no other, and a part
that cannot run here is "skipped" with the reason. Every part's output
goes to <part>.log beside its JSON (the run's metrics.json, or the
command's own JSON file) in results/accelerator/<device>/, with the table
of parts (seconds, figure, goal, result) as summary.md and summary.json,
headed by the device, its driver, the jax/jaxlib versions and the commit.
Where a goal is missed the table says where the time went (the run's
phases: compilation, steps, test, figures, checkpoints, host input).

--smoke runs each part in its smallest form (a few steps; vs-torch on
the CPU build of torch too) and reports the goals without judging them
("smoke"); it writes into --out, else a new temporary folder, never into
results/. This process never starts a JAX backend itself: the device is
read by a child, so the parts have the accelerator (a TPU admits one
process) and its memory to themselves.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import accelerator_parts as parts_lib
from benchmarks.overhead import ROOT, commit
from mnist_jax.files import write_json
from mnist_jax.flags import ShowDefaults

RESULTS = ROOT / "results" / "accelerator"
BUDGET_SECONDS = 480.0  # Eight minutes: later parts get what is left, then are skipped.
SMOKE_BUDGET_SECONDS = 900.0  # A bound for a loaded machine; the smoke form takes far less.
PROBE = """
import json, importlib.metadata as m, jax
from mnist_jax.parallel import host_cpu
d = jax.devices()[0]
print(json.dumps({"platform": d.platform, "kind": d.device_kind, "count": jax.device_count(),
    "jax": jax.__version__, "jaxlib": m.version("jaxlib"), "host": host_cpu()}))
"""
TORCH_PROBE = "import torch; print(torch.__version__, torch.cuda.is_available())"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accelerator",
        description=__doc__.split("\n")[0],
        formatter_class=ShowDefaults,
    )
    add = parser.add_argument
    add("--parts", default="all", help="comma-separated parts (--list names them), or all")
    add("--list", action="store_true", help="list the parts, their limits and goals, and stop")
    add("--smoke", action="store_true", help="every part in its smallest form; goals not judged")
    add("--out", type=pathlib.Path, help=f"output folder (default: {RESULTS}/<device>)")
    add("--timeout-scale", type=float, default=1.0, help="multiplies every part's limit")
    add(
        "--budget",
        type=float,
        help=f"seconds in all (default {BUDGET_SECONDS:g}; smoke {SMOKE_BUDGET_SECONDS:g})",
    )
    add("--data-dir", type=pathlib.Path, help="tfds data dir holding mnist/3.0.1, for every part")
    add("--idx-dir", type=pathlib.Path, help="folder of the four MNIST IDX files, for every part")
    return parser


def list_parts() -> str:
    lines = ["| part | what | limit s (H100) | smoke limit s | goal |", "|---|---|---|---|---|"]
    lines += [
        f"| {p.name} | {p.what} | {p.seconds:g} | {p.smoke_seconds:g} | {p.goal} |"
        for p in parts_lib.PARTS
    ]
    return "\n".join(lines)


def child_env(part: parts_lib.Part, args: argparse.Namespace) -> dict:
    """The environment of a part's process: this one's, less an outer
    pytest's variables, no progress bars, the part's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update({"TQDM_DISABLE": "1", **dict(part.env)})
    if args.data_dir and not part.data_flags:
        env["TFDS_DATA_DIR"] = str(args.data_dir)
    return env


def probe_device() -> dict:
    """The device JAX finds (read in a child process), its driver where
    nvidia-smi is present, and the commit."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"JAX found no device:\n{done.stderr[-2000:]}")
    device = json.loads(done.stdout.strip().splitlines()[-1])
    device["driver"] = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        device["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    device["commit"] = commit()
    return device


def slug(kind: str) -> str:
    """A device kind as a folder name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def skip_reason(part: parts_lib.Part, device: dict, smoke: bool) -> str | None:
    """Why a part cannot run here, or None: a module it needs is missing
    (the tests need the `test` extra, vs-torch torch), or vs-torch off the
    CPU (outside --smoke) has no CUDA build of torch that sees the GPU."""
    *modules, extra = part.needs or ("",)
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install -e '.[{extra}]')"
    if part.name != "vs_torch" or smoke or device["platform"] == "cpu":
        return None
    if device["platform"] != "gpu":
        return f"no PyTorch side on a {device['platform']}"
    done = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip().endswith("True"):
        return f"torch {done.stdout.split()[0] if done.stdout else '?'} sees no CUDA GPU"
    return None


def run_command(argv: list[str], env: dict, log: pathlib.Path, limit: float) -> int | None:
    """Runs argv with its output into `log`; its exit code, or None if it
    ran past `limit` seconds (then its whole process group is killed:
    pytest's workers and vs-torch's too)."""
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def run_part(part, args, device: dict, out: pathlib.Path, limit: float) -> dict:
    """One part run and judged.

    Args:
      part: the part (accelerator_parts.Part).
      args: the parsed flags (--smoke, the data flags).
      device: probe_device's answer.
      out: the output folder: <part>.log and <part>.json go there.
      limit: the seconds it may run.

    Returns:
      Its row of the summary: part, goal, limit_seconds, command, seconds,
      status, figure and, where it ran, where its time went.
    """
    row = {"part": part.name, "goal": part.goal, "limit_seconds": round(limit, 1)}
    argv = parts_lib.command(part, args.smoke)
    if part.data_flags:
        argv += (("--data-dir", str(args.data_dir)) if args.data_dir else ()) + (
            ("--idx-dir", str(args.idx_dir)) if args.idx_dir else ()
        )
    with tempfile.TemporaryDirectory(prefix=f"accelerator-{part.name}-") as scratch:
        work, output = pathlib.Path(scratch) / "run", out / f"{part.name}.json"
        output.unlink(missing_ok=True)
        fill = {"work": str(work), "output": str(output), "workers": workers(device)}
        argv = [sys.executable, "-m", *(a.format(**fill) for a in argv)]
        row["command"] = " ".join(["python", *argv[1:]])
        log = out / f"{part.name}.log"
        start = time.perf_counter()
        code = run_command(argv, child_env(part, args), log, limit)
        row["seconds"] = round(time.perf_counter() - start, 2)
        if code is None:
            return {**row, "status": "timeout", "figure": f"killed after {limit:.0f} s"}
        try:
            result = parts_lib.read_result(part, work, output, log.read_text())
            verdict = part.judge(result)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {**row, "status": "error", "figure": f"exit {code}; no result ({e})"}
    write_json(output, result)
    if args.smoke:  # The smallest forms cannot reach the goals: they are not judged.
        status = "smoke" if code == 0 else "fail"
    else:
        status = "pass" if code == 0 and verdict.met is not False else "fail"
    figure = verdict.figure + (f" (exit {code})" if code else "")
    return {**row, "status": status, "figure": figure, "where": verdict.where}


def workers(device: dict) -> str:
    """pytest-xdist workers for the device tests: one process on a TPU (it
    admits one), a few elsewhere."""
    return "0" if device["platform"] == "tpu" else "4"


def format_summary(summary: dict) -> str:
    d = summary["device"]
    lines = [
        f"Accelerator check{' (smoke)' if summary['smoke'] else ''}: {d['count']} x {d['kind']} "
        f"({d['platform']}), driver {d['driver'] or 'n/a'}, host {d['host']}; jax {d['jax']}, "
        f"jaxlib {d['jaxlib']}; commit {d['commit']}; {summary['date']}; "
        f"{summary['wall_seconds']:.0f} s in all",
        "",
        "| part | seconds | figure | goal | result |",
        "|---|---|---|---|---|",
    ]
    for r in summary["parts"]:
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else ""
        lines.append(f"| {r['part']} | {seconds} | {r['figure']} | {r['goal']} | {r['status']} |")
    missed = [r for r in summary["parts"] if r["status"] == "fail" and r.get("where")]
    if missed:
        lines += ["", "Where the time went, where a goal was missed:", ""]
        lines += [f"- {r['part']}: {r['where']}" for r in missed]
    return "\n".join(lines)


def run_parts(chosen, args, device: dict, out: pathlib.Path) -> list[dict]:
    """Every chosen part in turn, each within its limit and what is left of
    the budget; a part with under 10 s left is skipped."""
    budget = args.budget or (SMOKE_BUDGET_SECONDS if args.smoke else BUDGET_SECONDS)
    deadline = time.perf_counter() + budget
    rows = []
    for part in chosen:
        limit = args.timeout_scale * (part.smoke_seconds if args.smoke else part.seconds)
        limit = min(limit, deadline - time.perf_counter())
        reason = skip_reason(part, device, args.smoke)
        if reason is None and limit < 10:
            reason = f"the {budget:.0f} s budget is spent"
        if reason is not None:
            row = {"part": part.name, "goal": part.goal, "status": "skipped", "figure": reason}
        else:
            row = run_part(part, args, device, out, limit)
        print(f"{row['part']}: {row['status']}, {row['figure']}", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_parts())
        return {}
    try:
        chosen = parts_lib.by_name(args.parts)
    except ValueError as e:
        parser.error(str(e))
    if args.timeout_scale <= 0 or (args.budget is not None and args.budget <= 0):
        parser.error("--timeout-scale and --budget must be > 0")
    start = time.perf_counter()
    device = probe_device()
    if args.out:
        out = args.out
    elif args.smoke:
        out = pathlib.Path(tempfile.mkdtemp(prefix="mnist-jax-accelerator-smoke-"))
    else:
        out = RESULTS / slug(device["kind"])
    out.mkdir(parents=True, exist_ok=True)
    print(f"{device['count']} x {device['kind']}; writing to {out}", flush=True)
    rows = run_parts(chosen, args, device, out)
    summary = {
        "smoke": args.smoke,
        "device": device,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "parts": rows,
    }
    write_json(out / "summary.json", summary)
    table = format_summary(summary)
    (out / "summary.md").write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {out}")
    return summary


if __name__ == "__main__":
    ok = {"pass", "smoke", "skipped"}
    sys.exit(0 if all(r["status"] in ok for r in main().get("parts", [])) else 1)
