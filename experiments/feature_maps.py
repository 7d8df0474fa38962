"""Report 000's feature maps of a trained model for one image; the ViT's attention maps.

    python -m experiments.feature_maps --checkpoint runs/cnn/<time> --index 7
    python -m experiments.feature_maps --checkpoint RUN_DIR --image my_digit.png [--invert]

For the run's best checkpoint and one image (a test-set index, or a PNG or
JPEG of any size, brought to MNIST's form as `python -m mnist_jax.predict`
does), writes into
RUN_DIR/feature_maps/<image>/:
  input.png                     the image the model saw
  NN_<layer>.png                every convolution's output, a panel per channel
  attention.png                 ViT only: each head's CLS attention per layer,
                                and the attention rollout (Abnar & Zuidema 2020)
  feature_maps.json             the prediction and each layer's statistics
and prints the predicted digit and a table of the layers. MNIST digits are
white on black: an image with a light border is inverted (--invert forces it).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

from mnist_jax import data as data_lib
from mnist_jax import digits, inspection, sources, tasks, viz
from mnist_jax.cli import setup
from mnist_jax.files import write_json
from mnist_jax.flags import ShowDefaults, add_data_flags
from mnist_jax.rundir import RunError, load_run
from mnist_jax.steps import infer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults, prog="python -m experiments.feature_maps", description=__doc__
    )
    add = parser.add_argument
    add(
        "--checkpoint",
        type=pathlib.Path,
        required=True,
        metavar="RUN_DIR",
        help="a finished run's directory (its metrics.json and checkpoints/)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--index", type=int, help="an image of the MNIST test set (default: 0)")
    source.add_argument(
        "--image",
        type=pathlib.Path,
        help="a PNG (or JPEG) file of a digit (default: none, --index)",
    )
    add(
        "--invert",
        action="store_true",
        help="invert --image (dark digit on light paper; default: decided by its border)",
    )
    add("--channels", type=int, default=64, help="at most this many channels per layer")
    add("--out", type=pathlib.Path, help="output folder (default: RUN_DIR/feature_maps/<image>)")
    add_data_flags(parser)
    return parser


def layer_statistics(maps: np.ndarray) -> dict:
    """Shape, mean and the fraction of positive values of one layer's output (h, w, C)."""
    return {
        "shape": list(maps.shape),
        "mean": float(maps.mean()),
        "positive_fraction": float((maps > 0).mean()),
    }


def main(argv=None) -> dict:
    setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error(f"--channels must be >= 1, got {args.channels}")
    try:
        run = load_run(args.checkpoint)
        image, label, name = chosen_image(args)
    except (RunError, ValueError) as e:
        parser.error(str(e))
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e

    out = args.out or args.checkpoint / "feature_maps" / name
    out.mkdir(parents=True, exist_ok=True)
    viz.save_png(np.repeat(image, 3, axis=-1), out / "input.png")
    result = {"run": str(args.checkpoint), "model": run.config.model, "image": name, "label": label}
    result.update(inspect_image(run, image, out, args.channels))
    write_json(out / "feature_maps.json", result)
    print_result(result, args.checkpoint, out)
    return result


def chosen_image(args: argparse.Namespace) -> tuple[np.ndarray, int | None, str]:
    """(image (28, 28, 1) uint8, its label or None, its name) of --image or --index."""
    if args.image is not None:
        # As MNIST's digits (mnist_jax.digits): grey, 20x20 box, centred by mass.
        image = digits.load_digit(args.image, invert=True if args.invert else None)
        return image, None, args.image.stem
    index = 0 if args.index is None else args.index
    test = sources.load_mnist(
        data_dir=args.data_dir, idx_dir=args.idx_dir, download=not args.no_download
    ).test
    if not 0 <= index < len(test):
        raise ValueError(f"--index {index} is outside the test set (0 to {len(test) - 1})")
    return test.images[index], int(test.labels[index]), f"index_{index}"


def inspect_image(run, image: np.ndarray, out: pathlib.Path, channels: int) -> dict:
    """The prediction (a classifier's), a PNG and statistics per convolution
    (at most `channels` channels shown), and a ViT's attention.png, into `out`."""
    spec = run.config.step_config()
    images = image[None]  # (1, 28, 28, 1) uint8
    result = {}
    if spec.classifies:
        inputs = inspection.clean_inputs(images, spec)
        logits = tasks.logits_of(infer(run.state, inputs, spec.dtype), spec)  # (1, 10)
        probabilities = np.asarray(jax.nn.softmax(logits[0]))
        result["predicted"] = int(probabilities.argmax())
        result["probability"] = float(probabilities.max())

    maps = inspection.feature_maps(run.state, images, spec)
    result["layers"] = {}
    for number, (layer, values) in enumerate(maps.items(), start=1):
        shown = values[0, ..., :channels]  # (h, w, <= channels)
        described = f"{shown.shape[-1]} of {values.shape[-1]} channels"
        title = f"{run.config.model} {layer}: {values.shape[1]}x{values.shape[2]}, {described}"
        viz.save_png(
            viz.figure_to_array(viz.feature_maps_figure(shown, title)),
            out / f"{number:02d}_{layer.replace('/', '_')}.png",
        )
        result["layers"][layer] = layer_statistics(values[0])
    if run.config.model == "vit":
        weights = inspection.attention_weights(run.state, images, spec)[0]  # (depth, H, T, T)
        rollout = inspection.rollout_map(weights)  # (g, g)
        viz.save_png(
            viz.figure_to_array(
                viz.attention_figure(
                    image[..., 0] / 255.0,
                    inspection.cls_attention_maps(weights),
                    rollout,
                    f"{run.config.model}: CLS attention per layer and head",
                )
            ),
            out / "attention.png",
        )
        result["attention"] = {
            "layers": int(weights.shape[0]),
            "heads": int(weights.shape[1]),
            "rollout_peak_patch": int(rollout.argmax()),
        }
    return result


def print_result(result: dict, checkpoint: pathlib.Path, out: pathlib.Path) -> None:
    """The image, the prediction and a line per layer: its output's shape,
    mean and fraction above 0."""
    label = result["label"]
    print(
        f"\n{result['model']} (best checkpoint of {checkpoint}), image {result['image']}"
        + (f", true label {label}" if label is not None else "")
    )
    if "predicted" in result:
        print(f"predicted {result['predicted']} with probability {result['probability']:.3f}")
    print(f"\n{'layer':<28} {'output':>14} {'mean':>9} {'> 0':>7}")
    for layer, stats in result["layers"].items():
        shape = "x".join(map(str, stats["shape"]))
        positive = f"{100 * stats['positive_fraction']:>6.1f}%"
        print(f"{layer:<28} {shape:>14} {stats['mean']:>9.4f} {positive}")
    print(f"\nfigures are in {out}")


if __name__ == "__main__":
    main()
