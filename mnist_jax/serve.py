"""A page to draw a digit on, read by a trained classifier as you draw.

    python -m mnist_jax.serve                        # http://127.0.0.1:8000/
    python -m mnist_jax.serve --checkpoint RUN_DIR   # another run
    python -m mnist_jax.serve --port 0               # any free port (printed)
    python -m mnist_jax.serve --host 0.0.0.0         # other machines too (warned)

The page (mnist_jax/serve_page.html) sends what was drawn with mouse, pen
or finger, or an image file, as the body of `POST /predict`; the server
brings it to MNIST's form exactly as `python -m mnist_jax.predict` does
(mnist_jax.digits) and answers with the digit, the top-3 probabilities and
the 28x28 picture the model read. The model is the one predict uses by
default (predict.default_run: the reader where its run exists), compiled
once at start-up.

The standard library's threading HTTP server is enough for one page and a
JSON answer: no framework to install or keep up. It is bound to
localhost unless --host says otherwise; a request's body is limited to
MAX_BODY bytes and must be an image; every bad request gets a 4xx JSON
answer of one sentence, and the server goes on serving. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import http
import http.server
import importlib.resources
import io
import json
import os
import pathlib
import signal
import sys
import threading
import time

import numpy as np

from mnist_jax import digits, predict, rundir

DEFAULT_PORT = 8000
MAX_BODY = 8 * 2**20  # Bytes: a phone photo fits; a drawing is about 10 kB.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_TIMEOUT = 10.0  # Seconds a client may take to send its request.
# Images read at once: one per core. A picture of up to digits.MAX_PIXELS
# takes a few hundred MB while it is read, so many at once are queued here
# instead of taking all the memory.
_READING = threading.BoundedSemaphore(os.cpu_count() or 1)


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and one sentence."""

    def __init__(self, status: http.HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def page() -> bytes:
    """The drawing page, from the package's files."""
    return (importlib.resources.files("mnist_jax") / "serve_page.html").read_bytes()


def read_digit(classifier: predict.Classifier, body: bytes) -> dict:
    """The answer to one image: {"digit", "top3", "probabilities", "pixels"}.

    pixels: the (28, 28) uint8 picture the model read, as rows of ints.
    Raises BadRequest (400) for bytes that hold no readable digit.
    """
    try:
        picture = digits.to_mnist(
            digits.decode_grey(io.BytesIO(body), "the image"), name="the image"
        )  # (28, 28, 1)
    except digits.ImageError as e:
        raise BadRequest(http.HTTPStatus.BAD_REQUEST, str(e)) from e
    probs = classifier.probabilities(picture[None])[0]  # (10,)
    top = predict.top_classes(probs)
    return {
        "digit": top[0]["digit"],
        "top3": top,
        "probabilities": [float(p) for p in probs],
        "pixels": picture[..., 0].tolist(),
    }


class Handler(http.server.BaseHTTPRequestHandler):
    """GET / (the page), GET /model (what reads), POST /predict (an image)."""

    classifier: predict.Classifier  # Set on the subclass that make_server builds.
    model_info: dict
    timeout = REQUEST_TIMEOUT
    server_version = "mnist-jax"

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self) -> tuple[str, bytes]:
        if self.path in ("/", "/index.html"):
            return "text/html; charset=utf-8", page()
        if self.path == "/model":
            return "application/json", json.dumps(self.model_info).encode()
        if self.path == "/predict":
            raise BadRequest(
                http.HTTPStatus.METHOD_NOT_ALLOWED, "send the image with POST /predict"
            )
        raise BadRequest(http.HTTPStatus.NOT_FOUND, f"no page {self.path}: open / to draw")

    def _post(self) -> tuple[str, bytes]:
        if self.path != "/predict":
            raise BadRequest(
                http.HTTPStatus.NOT_FOUND, f"nothing to POST to at {self.path}: use /predict"
            )
        body = self._image_body()
        start = time.perf_counter()
        with _READING:
            answer = read_digit(self.classifier, body)
        answer["milliseconds"] = round(1000 * (time.perf_counter() - start), 2)
        return "application/json", json.dumps(answer).encode()

    def _image_body(self) -> bytes:
        """The request's body, once its headers say it is an image of a size we take."""
        kind = self.headers.get("Content-Type", "")
        if not kind.startswith("image/"):
            raise BadRequest(
                http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"the body must be an image (Content-Type image/png, image/jpeg, ...), "
                f"not {kind or 'untyped'}",
            )
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest(
                http.HTTPStatus.LENGTH_REQUIRED, "send the image's size as Content-Length"
            )
        if int(length) > MAX_BODY:
            self.close_connection = True  # The body is not read: the connection cannot go on.
            raise BadRequest(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the image is {int(length):,} bytes, more than the {MAX_BODY:,} taken: "
                "scale it down",
            )
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise BadRequest(http.HTTPStatus.BAD_REQUEST, "the image ended before its length")
        return body

    def _answer(self, respond) -> None:
        """Sends what `respond()` returns, or a JSON error: never a traceback."""
        try:
            kind, content = respond()
            status = http.HTTPStatus.OK
        except BadRequest as e:
            status, kind, content = e.status, "application/json", _error(str(e))
        except Exception as e:  # noqa: BLE001  A bug here must not stop the server.
            self.log_message("error answering %s: %s: %s", self.path, type(e).__name__, e)
            status, kind = http.HTTPStatus.INTERNAL_SERVER_ERROR, "application/json"
            content = _error(f"the server failed to answer ({type(e).__name__}); see its log")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(content)

    def send_error(self, code, message=None, explain=None):
        """Malformed requests (refused by http.server before any do_*) get JSON too."""
        status = http.HTTPStatus(code)
        content = _error(f"{message or status.phrase}")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(content)

    def log_request(self, code="-", size="-"):
        """Logs refused and failed requests only: a drawing sends one per stroke."""
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for open connections.
    # Connections waiting to be accepted: more than the default 5, which
    # makes the ninth of eight drawing clients' connections wait a second
    # for the system to retry it.
    request_queue_size = 128


def make_server(
    classifier: predict.Classifier,
    checkpoint: pathlib.Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> http.server.ThreadingHTTPServer:
    """A threading server (one thread a connection) answering with
    `classifier`, the run in `checkpoint`, bound but not yet serving; port 0
    takes a free one (server.server_port)."""
    run = classifier.run
    info = {
        "model": run.config.model,
        "checkpoint": str(checkpoint),
        "experiment": run.summary.get("experiment"),
        "test_accuracy": run.summary.get("test", {}).get("accuracy"),
    }
    handler = type("BoundHandler", (Handler,), {"classifier": classifier, "model_info": info})
    server = _Server((host, port), handler)
    return server


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_jax.serve", description=__doc__.split("\n")[0]
    )
    predict.add_checkpoint_flag(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: "
        "every network it is on)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the port (default {DEFAULT_PORT}; 0: any free one)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        checkpoint = args.checkpoint or predict.default_run()
        run = predict.load_classifier(checkpoint)
    except rundir.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    classifier = predict.Classifier(run)
    # Compiled and loaded before the first client: the model, and what preparing a picture imports.
    classifier.probabilities(digits.to_mnist(np.eye(digits.SIZE) * 255.0)[None])
    try:
        server = make_server(classifier, checkpoint, args.host, args.port)
    except OSError as e:
        print(
            f"error: cannot listen on {args.host}:{args.port} ({e.strerror}): choose another "
            "--port (0: any free one) or --host",
            file=sys.stderr,
        )
        raise SystemExit(2) from e
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use "
            "the page; it has no passwords and no encryption",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"reading digits with {run.config.model} from {checkpoint}\n"
        f"http://{host}:{server.server_port}/  (Ctrl-C stops)",
        flush=True,
    )
    # Ctrl-C (and a plain `kill`) stop it, even where the shell that
    # started it in the background had SIGINT ignored, which Python keeps.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
