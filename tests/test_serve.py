"""The drawing page's server (mnist_jax.serve) over HTTP, and predict's default run.

The HTTP tests answer with a stub classifier (fast: no training); those
marked slow read with a trained run. The page in a real browser is
tests/test_serve_browser.py's.
"""

import concurrent.futures
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import threading
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import start_server
from mnist_jax import digits, predict, rundir, serve


class StubClassifier:
    """Says 3 with probability 0.7 for every picture, and counts the calls."""

    def __init__(self):
        self.run = types.SimpleNamespace(
            config=types.SimpleNamespace(model="stub"), summary={"experiment": "stub"}
        )
        self.calls = 0

    def probabilities(self, images):
        self.calls += 1
        probs = np.full((len(images), 10), 0.3 / 9)
        probs[:, 3] = 0.7
        return probs


def png_bytes(picture: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


def drawn_bar() -> np.ndarray:
    """A black vertical bar on white, as the page's 280x280 pad sends a 1."""
    pad = np.full((280, 280), 255, np.uint8)
    pad[50:230, 130:150] = 0
    return pad


@pytest.fixture
def served(request):
    """(base url, classifier) of a server running in a thread; the
    classifier is the stub unless the test is parametrised indirectly."""
    classifier = getattr(request, "param", None) or StubClassifier()
    server = serve.make_server(classifier, pathlib.Path("stub-run"), port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", classifier
    server.shutdown()
    server.server_close()


def call(url, body=None, headers=None, method=None):
    """(status, parsed JSON or text) of one request; errors are answers too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, kind, content = (
                response.status,
                response.headers["Content-Type"],
                response.read(),
            )
    except urllib.error.HTTPError as e:
        status, kind, content = e.code, e.headers["Content-Type"], e.read()
    return status, json.loads(content) if kind == "application/json" else content.decode()


def test_the_page_and_the_models_description_are_served(served):
    url, _ = served
    status, page = call(url + "/")
    assert status == 200 and '<canvas id="pad"' in page and "/predict" in page
    assert call(url + "/model") == (
        200,
        {"model": "stub", "checkpoint": "stub-run", "experiment": "stub", "test_accuracy": None},
    )


def test_a_drawing_is_read_as_predict_reads_an_image_file(served, tmp_path):
    url, classifier = served
    status, answer = call(url + "/predict", png_bytes(drawn_bar()), {"Content-Type": "image/png"})
    assert status == 200
    assert answer["digit"] == 3 and [t["digit"] for t in answer["top3"]][0] == 3
    assert answer["top3"][0]["probability"] == pytest.approx(0.7)
    assert len(answer["probabilities"]) == 10 and sum(answer["probabilities"]) == pytest.approx(1)
    Image.fromarray(drawn_bar()).save(tmp_path / "bar.png")
    expected = digits.load_digit(tmp_path / "bar.png")[..., 0]  # What predict would read.
    np.testing.assert_array_equal(np.array(answer["pixels"], np.uint8), expected)
    assert classifier.calls == 1


BAD_REQUESTS = {
    "not an image": (dict(body=b"hello", headers={"Content-Type": "text/plain"}), 415, "image"),
    "damaged": (
        dict(body=b"\x89PNG\r\n\x1a\nbroken", headers={"Content-Type": "image/png"}),
        400,
        "not an image Pillow can read",
    ),
    "blank": (
        dict(
            body=png_bytes(np.full((280, 280), 255, np.uint8)),
            headers={"Content-Type": "image/png"},
        ),
        400,
        "blank",
    ),
    "GET /predict": (dict(method="GET"), 405, "POST"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_json_sentence_and_the_server_goes_on(served, case):
    url, classifier = served
    kwargs, status, words = BAD_REQUESTS[case]
    got, answer = call(url + "/predict", **kwargs)
    assert got == status, answer
    message = answer["error"]
    assert words in message and "\n" not in message and "Traceback" not in message
    assert classifier.calls == 0
    assert call(url + "/predict", png_bytes(drawn_bar()), {"Content-Type": "image/png"})[0] == 200


def test_unknown_pages_malformed_requests_no_length_and_too_large_get_json_errors(served):
    url, _ = served
    status, answer = call(url + "/nowhere")
    assert status == 404 and "open / to draw" in answer["error"]
    status, answer = call(url + "/model", b"{}", {"Content-Type": "image/png"})
    assert status == 404 and "/predict" in answer["error"]
    host, port = url.removeprefix("http://").split(":")
    for raw, code in (
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\r\n", b" 411 "),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", b" 431 "),
        (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n" % (serve.MAX_BODY + 1),
            b" 413 ",
        ),
    ):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(raw)
            reply = b"".join(iter(lambda: s.recv(65536), b""))  # To the server's close.
        head, _, body = reply.partition(b"\r\n\r\n")
        assert code in head.split(b"\r\n")[0] and b"application/json" in head, reply
        assert "\n" not in json.loads(body)["error"]
    assert call(url + "/predict", png_bytes(drawn_bar()), {"Content-Type": "image/png"})[0] == 200


def test_concurrent_clients_are_all_answered(served):
    url, classifier = served
    body = png_bytes(drawn_bar())

    def client(_):
        return [call(url + "/predict", body, {"Content-Type": "image/png"})[0] for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [s for statuses in pool.map(client, range(8)) for s in statuses]
    assert statuses == [200] * 80 and classifier.calls == 80


def test_it_listens_on_localhost_unless_told():
    assert serve.parse_args([]).host == "127.0.0.1"
    assert serve.parse_args([]).port == serve.DEFAULT_PORT


def copy_run(source: pathlib.Path, to: pathlib.Path, mtime: float) -> pathlib.Path:
    shutil.copytree(source, to)
    os.utime(to / rundir.SUMMARY, (mtime, mtime))
    return to


@pytest.mark.slow
def test_the_default_run_is_the_readers_else_the_newest_classifier(quick_runs, tmp_path):
    cnn = quick_runs.get("cnn")["workdir"]
    autoencoder = quick_runs.get("conv_ae")["workdir"]
    root = tmp_path / "runs"
    with pytest.raises(rundir.RunError, match="train the reader with python -m experiments.reader"):
        predict.default_run(root)
    now = time.time()
    copy_run(autoencoder, root / "conv_ae" / "1", now)  # Newest of all, but no classifier.
    with pytest.raises(rundir.RunError):
        predict.default_run(root)
    older = copy_run(cnn, root / "cnn" / "older", now - 300)
    newer = copy_run(cnn, root / "cnn" / "newer", now - 100)
    assert predict.default_run(root) == newer
    (newer / rundir.SUMMARY).unlink()  # Unfinished: passed over.
    assert predict.default_run(root) == older
    reader = copy_run(cnn, root / predict.READER / "20260101-000000", now - 1000)
    assert predict.default_run(root) == reader  # The reader first, though older.


@pytest.mark.slow
def test_the_command_serves_a_run_warns_off_localhost_and_stops_on_ctrl_c(quick_runs):
    workdir = quick_runs.get("cnn")["workdir"]
    process, url = start_server(["--checkpoint", str(workdir), "--host", "0.0.0.0"])
    try:
        url = url.replace("0.0.0.0", "127.0.0.1")
        status, answer = call(
            url + "/predict", png_bytes(drawn_bar()), {"Content-Type": "image/png"}
        )
        assert status == 200 and 0 <= answer["digit"] <= 9
        assert call(url + "/model")[1]["checkpoint"] == str(workdir)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
    assert "warning: listening on 0.0.0.0" in err


def test_no_run_to_read_with_is_one_sentence_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # An empty runs/.
    with pytest.raises(SystemExit) as stop:
        serve.main(["--port", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished classifier run under runs/") and err.count("\n") == 1
