"""Read handwritten digits from image files with a trained classifier.

    python -m mnist_jax.predict [--checkpoint RUN_DIR] IMAGE... [--json]

RUN_DIR is a finished run of any classifier (what `python -m
experiments.cnn --workdir RUN_DIR` leaves); its best checkpoint is used.
Without it: the newest run of the reader (`python -m experiments.reader`,
trained for other people's handwriting) under runs/, else the newest
classifier run there.
Each IMAGE (PNG, JPEG, ... of any size and colour mode) is brought to
MNIST's form first (mnist_jax.digits: grey, white on black, 20x20 box,
centred by mass). Prints each image's digit and its top-3 probabilities,
or with --json one JSON document. An image that cannot be read gets an
error line naming it and the others are still read; the exit status is
then 1 (2 for a run directory that cannot be used).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from mnist_jax import digits, rundir

TOP = 3
BATCH = 16  # Images per call of the compiled model.
READER = "reader"  # The experiment that trains the default reader (experiments/reader.py).


def add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """--checkpoint RUN_DIR, defaulting to default_run() (predict's and serve's)."""
    parser.add_argument(
        "--checkpoint",
        type=pathlib.Path,
        metavar="RUN_DIR",
        help=f"a finished classifier run (its metrics.json and checkpoints/; default: the "
        f"newest run of experiments.{READER} under {rundir.DEFAULT_RUNS_DIR}/, else the newest "
        "classifier run there)",
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_jax.predict", description=__doc__.split("\n")[0]
    )
    add_checkpoint_flag(parser)
    parser.add_argument(
        "images", type=pathlib.Path, nargs="+", metavar="IMAGE", help="image files of digits"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ink = parser.add_mutually_exclusive_group()
    ink.add_argument(
        "--invert",
        dest="invert",
        action="store_const",
        const=True,
        help="dark digits on light paper (default: decided from each image's border)",
    )
    ink.add_argument(
        "--no-invert",
        dest="invert",
        action="store_const",
        const=False,
        help="light digits on dark paper, as MNIST's",
    )
    return parser.parse_args(argv)


def run_dir_of(path: pathlib.Path) -> pathlib.Path:
    """The run directory for a path to it, its metrics.json or its checkpoints/ folder."""
    path = path.expanduser()
    if path.name in ("metrics.json", "checkpoints"):
        return path.parent
    if path.parent.name == "checkpoints":  # checkpoints/best, checkpoints/latest
        return path.parent.parent
    return path


def load_classifier(path: pathlib.Path) -> rundir.LoadedRun:
    """The best checkpoint of the classifier run at `path`; RunError if it is none."""
    run = rundir.load_run(run_dir_of(path))
    if not run.config.step_config().classifies:
        raise rundir.RunError(
            f"{path} is a run of {run.config.model} (task {run.config.task!r}), which does "
            "not classify digits; give the run of a classifier (e.g. python -m "
            "experiments.cnn --workdir RUN_DIR)"
        )
    return run


def _is_classifier_run(summary_file: pathlib.Path) -> bool:
    """Whether the metrics.json at `summary_file` is of a finished classifier
    run with checkpoints that hold the whole model."""
    from mnist_jax import checkpoints
    from mnist_jax.config import config_from_dict

    try:
        summary = json.loads(summary_file.read_text())
        classifies = config_from_dict(summary["config"]).step_config().classifies
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (
        classifies
        and not summary.get("cached_features")
        and checkpoints.has_checkpoints(summary_file.parent)
    )


def default_run(root: pathlib.Path = rundir.DEFAULT_RUNS_DIR) -> pathlib.Path:
    """The run to read digits with when none is named: the newest finished
    run of the reader under root/reader, else the newest finished classifier
    run anywhere under `root` (by the time its metrics.json was written).

    Raises RunError saying what to train when there is none.
    """
    root = pathlib.Path(root).expanduser()
    for folder in (root / READER, root):
        newest_first = sorted(
            folder.rglob(rundir.SUMMARY), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for summary_file in newest_first:
            if _is_classifier_run(summary_file):
                return summary_file.parent
    raise rundir.RunError(
        f"no finished classifier run under {root}/: train the reader with python -m "
        f"experiments.{READER} (or any classifier, e.g. python -m experiments.cnn), or name "
        "a run with --checkpoint RUN_DIR"
    )


class Classifier:
    """A classifier run's best checkpoint, compiled once: digits -> probabilities.

    Images go in batches of BATCH, the last padded, so that one compiled
    program serves any number of images (and the compilation cache keeps
    it for the next process).
    """

    def __init__(self, run: rundir.LoadedRun):
        import jax

        from mnist_jax import inspection, steps, tasks

        self.run = run
        spec = run.config.step_config()

        def forward(state, images):  # (BATCH, 28, 28, 1) uint8 -> (BATCH, 10)
            outputs = steps.infer(state, inspection.clean_inputs(images, spec), spec.dtype)
            return jax.nn.softmax(tasks.logits_of(outputs, spec), axis=-1)

        self._forward = jax.jit(forward)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) of uint8 digits (N, 28, 28, 1)."""
        padded = np.concatenate(
            [images, np.zeros((-len(images) % BATCH, *images.shape[1:]), images.dtype)]
        )
        probs = [
            np.asarray(self._forward(self.run.state, padded[i : i + BATCH]))
            for i in range(0, len(padded), BATCH)
        ]
        return np.concatenate(probs)[: len(images)]


def top_classes(probs: np.ndarray, k: int = TOP) -> list[dict]:
    """The k likeliest digits, likeliest first: [{"digit", "probability"}, ...]."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"digit": int(d), "probability": float(probs[d])} for d in order]


def predict_files(
    classifier: Classifier, paths: list[pathlib.Path], invert: bool | None = None
) -> list[dict]:
    """{"image", "digit", "top3"} per readable file, {"image", "error"} per other, in order."""
    results, pictures = [], []
    for path in paths:
        try:
            pictures.append(digits.load_digit(path, invert=invert))
            results.append({"image": str(path)})
        except digits.ImageError as e:
            results.append({"image": str(path), "error": str(e)})
    if pictures:
        probs = iter(classifier.probabilities(np.stack(pictures)))
        for result in results:
            if "error" not in result:
                top = top_classes(next(probs))
                result.update(digit=top[0]["digit"], top3=top)
    return results


def format_line(result: dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"  # It names the file.
    top = ", ".join(f"{t['digit']} {t['probability']:.3f}" for t in result["top3"])
    return f"{result['image']}: {result['digit']}  (top {TOP}: {top})"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        if args.checkpoint is None:
            args.checkpoint = default_run()
            print(f"reading with {args.checkpoint}", file=sys.stderr)
        run = load_classifier(args.checkpoint)
    except rundir.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    results = predict_files(Classifier(run), args.images, args.invert)
    if args.json:
        print(
            json.dumps(
                {"checkpoint": str(args.checkpoint), "model": run.config.model, "results": results},
                indent=2,
            )
        )
    else:
        for result in results:
            print(format_line(result), file=sys.stderr if "error" in result else sys.stdout)
    if any("error" in r for r in results):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
