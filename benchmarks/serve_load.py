"""The drawing page's server under load: latency, errors and memory.

    python -m experiments.benchmark --serve                  # 8 clients x 200 requests
    python -m experiments.benchmark --serve --checkpoint RUN_DIR --clients 4 --requests 50

Starts `python -m mnist_jax.serve --port 0` as a process of its own (the
run: --checkpoint, else the one the page reads with by default), then
sends it drawings as the page does (PNGs of the 280x280 pad, DRAWINGS
below): first one client alone, one request after another (what a person
drawing waits for), then --rounds rounds of --clients clients at once,
--requests each, on loopback. Every answer is checked (status 200, a
digit); the server's resident memory is read from /proc after each phase. Ctrl-C
(SIGINT) must then stop the server with exit status 0.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from benchmarks.overhead import commit

PAD = 280  # The page's drawing pad, pixels.
STROKE = 20  # Its pen's width.
# Digits as a person draws them on the pad: strokes of (x, y) points.
DRAWINGS = {
    0: [
        [(140 + 70 * math.cos(t), 140 + 100 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 25)]
    ],
    1: [[(150, 40), (140, 240)]],
    2: [[(80, 90), (110, 50), (160, 45), (200, 80), (195, 125), (150, 170), (80, 235), (215, 235)]],
    4: [[(150, 40), (70, 170), (220, 170)], [(180, 90), (180, 245)]],
    7: [[(70, 50), (210, 50), (120, 240)]],
}


def drawing_png(strokes: list[list[tuple[float, float]]]) -> bytes:
    """The pad after `strokes`, as the page sends it: black round strokes on white, PNG."""
    from PIL import Image, ImageDraw

    pad = Image.new("L", (PAD, PAD), 255)
    pen = ImageDraw.Draw(pad)
    for stroke in strokes:
        pen.line(stroke, fill=0, width=STROKE, joint="curve")
        for x, y in (stroke[0], stroke[-1]):  # Round caps.
            pen.ellipse((x - STROKE / 2, y - STROKE / 2, x + STROKE / 2, y + STROKE / 2), fill=0)
    out = io.BytesIO()
    pad.save(out, format="PNG")
    return out.getvalue()


def start_server(argv: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m mnist_jax.serve ARGV --port 0` and the URL it printed once ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_jax.serve", *argv, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("http://"):
            return process, line.split()[0].rstrip("/")
    process.wait(30)
    raise RuntimeError(f"the server did not start: {process.stderr.read().strip()}")


def resident_mib(pid: int) -> float | None:
    """A process's resident memory (VmRSS) in MiB; None where /proc has none."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ("unknown" elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def post(url: str, body: bytes) -> tuple[float, str | None]:
    """(round-trip milliseconds, None or what was wrong) of one POST /predict."""
    request = urllib.request.Request(
        url + "/predict", data=body, headers={"Content-Type": "image/png"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        problem = None if 0 <= answer.get("digit", -1) <= 9 else f"no digit in {answer}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        problem = f"{type(e).__name__}: {e}"
    return 1000 * (time.perf_counter() - start), problem


def latencies(url: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    """`clients` clients at once, `requests` each: latency percentiles and errors."""

    def client(index):
        return [post(url, bodies[(index + i) % len(bodies)]) for i in range(requests)]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    times = sorted(ms for ms, _ in results)
    errors = [problem for _, problem in results if problem]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, round(0.99 * len(times)))], 2),
        "max_ms": round(times[-1], 2),
        "requests_per_second": round(len(results) / wall, 1),
    }


def run(
    checkpoint: pathlib.Path | None, clients: int = 8, requests: int = 200, rounds: int = 3
) -> dict:
    """The load test (module docstring), the loaded phase `rounds` times,
    the server's memory read after each; its figures as a dict."""
    process, url = start_server(["--checkpoint", str(checkpoint)] if checkpoint else [])
    try:
        bodies = [drawing_png(strokes) for strokes in DRAWINGS.values()]
        latencies(url, bodies, 1, 5)  # Warm: the first answers allocate what later ones reuse.
        memory = [resident_mib(process.pid)]
        alone = latencies(url, bodies, 1, requests)
        memory.append(resident_mib(process.pid))
        loaded = []
        for _ in range(rounds):
            loaded.append(latencies(url, bodies, clients, requests))
            memory.append(resident_mib(process.pid))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    return {
        "checkpoint": str(checkpoint) if checkpoint else "the default run",
        "one_client": alone,
        "many_clients": loaded,
        # After the warm-up, after one client, after each loaded round.
        "resident_mib": [None if m is None else round(m, 1) for m in memory],
        "stopped_cleanly": process.returncode == 0,
        "server_errors": err.strip()[-2000:],
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "commit": commit(),
    }


def format_result(result: dict) -> str:
    heads = ("clients", "requests", "errors", "p50 ms", "p99 ms", "max ms", "req/s")
    lines = [" ".join(f"{head:>9}" for head in heads)]
    for row in (result["one_client"], *result["many_clients"]):
        keys = (
            "clients",
            "requests",
            "errors",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "requests_per_second",
        )
        lines.append(" ".join(f"{row[key]:>9}" for key in keys))
    memory = ", ".join("?" if m is None else f"{m:.0f}" for m in result["resident_mib"])
    lines.append(
        f"server resident memory, MiB, after the warm-up, one client and each loaded round: "
        f"{memory}; stopped by Ctrl-C "
        + ("cleanly" if result["stopped_cleanly"] else "WITH AN ERROR")
    )
    return "\n".join(lines)
