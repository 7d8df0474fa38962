"""Report 000's data exploration: labels per split, 5 samples per label, pixel statistics.

    python -m experiments.eda                 # the whole of MNIST
    python -m experiments.eda --quick         # 1,000 train and 500 test images

The train/validation split is the experiments' own (stratified, 10 %
validation, --seed 0). Writes into runs/eda/<time> (or --workdir):
label_distribution.png, samples_per_label.png, pixel_statistics.png, the
same three as TensorBoard images (tensorboard/), and eda.json; ends with the
reports' numbers beside ours. Expected: 60,000 train and 10,000 test images
as reports 001 and 004 say, and a train pixel mean and std of 0.1307 and
0.3081, report 004's Normalize constants.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from mnist_jax import data as data_lib
from mnist_jax import data_stats, summaries, viz
from mnist_jax.cli import load_mnist_or_exit, resolve_workdir, setup
from mnist_jax.files import write_json
from mnist_jax.flags import DEFAULT_RUNS_DIR, ShowDefaults, add_data_flags

# (what, the report's number, its source)
REFERENCE = {
    "train images": (60_000, "reports 001, 004"),
    "test images": (10_000, "reports 001, 004"),
    "train pixel mean": (0.1307, "report 004, Normalize"),
    "train pixel std": (0.3081, "report 004, Normalize"),
}
QUICK_SIZES = {"train_size": 1_000, "test_size": 500}
SAMPLES_PER_LABEL = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults, prog="python -m experiments.eda", description=__doc__
    )
    add = parser.add_argument
    add(
        "--workdir",
        type=pathlib.Path,
        help=f"output folder (default: a new {DEFAULT_RUNS_DIR}/eda/<date-time>)",
    )
    add("--seed", type=int, default=0, help="seed of the train/validation split")
    add("--val-fraction", type=float, default=0.1, help="validation share of the train split")
    add_data_flags(parser)
    add(
        "--quick",
        action="store_true",
        help=f"a smoke test on stratified subsets: {QUICK_SIZES['train_size']:,} training and "
        f"{QUICK_SIZES['test_size']:,} test images",
    )
    return parser


def explore(splits: data_lib.Splits) -> dict:
    """Counts and pixel statistics of every split (the numbers eda.json holds)."""
    result = {}
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        pixels = data_stats.pixel_statistics(split.images)
        result[name] = {
            "images": len(split),
            "label_counts": data_stats.label_counts(split.labels).tolist(),
            **{k: pixels[k] for k in ("mean", "std", "zero_fraction")},
            "_pixels": pixels,
        }
    return result


def write_figures(splits: data_lib.Splits, stats: dict, workdir: pathlib.Path) -> list[str]:
    """The three PNGs, also as TensorBoard images; returns their file names."""
    train_pixels = stats["train"]["_pixels"]
    figures = {
        "label_distribution": viz.label_distribution_figure(
            {name: np.asarray(s["label_counts"]) for name, s in stats.items()},
            "MNIST labels per split",
        ),
        "samples_per_label": viz.samples_per_label_figure(
            splits.train.images,
            splits.train.labels,
            SAMPLES_PER_LABEL,
            f"{SAMPLES_PER_LABEL} training samples per label",
        ),
        "pixel_statistics": viz.pixel_statistics_figure(
            train_pixels["mean_image"],
            train_pixels["std_image"],
            {name: s["_pixels"]["histogram"] for name, s in stats.items()},
            "MNIST pixel statistics (train)",
        ),
    }
    with summaries.MetricWriter(workdir / "tensorboard") as writer:
        for name, fig in figures.items():
            image = viz.figure_to_array(fig)
            viz.save_png(image, workdir / f"{name}.png")
            writer.image(f"eda/{name}", 0, image)
    return [f"{name}.png" for name in figures]


def comparison_rows(splits: data_lib.Splits, stats: dict) -> list[tuple[str, str, str, str]]:
    """(what, report, ours, source); MNIST's train split is our train + validation."""
    whole_train = data_stats.pixel_statistics(
        np.concatenate([splits.train.images, splits.val.images])
    )
    ours = {
        "train images": stats["train"]["images"] + stats["val"]["images"],
        "test images": stats["test"]["images"],
        "train pixel mean": whole_train["mean"],
        "train pixel std": whole_train["std"],
    }
    fmt = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
    return [
        (what, fmt(value), fmt(ours[what]), source) for what, (value, source) in REFERENCE.items()
    ]


def main(argv=None) -> dict:
    setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    workdir = resolve_workdir("eda", args.workdir, resume=False)
    mnist = load_mnist_or_exit(args)
    splits = data_lib.make_splits(
        mnist, val_fraction=args.val_fraction, seed=args.seed, **(QUICK_SIZES if args.quick else {})
    )
    workdir.mkdir(parents=True, exist_ok=True)
    stats = explore(splits)
    files = write_figures(splits, stats, workdir)
    result = {
        "source": mnist.source,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "quick": args.quick,
        "splits": {
            name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in stats.items()
        },
    }
    write_json(workdir / "eda.json", result)

    print(f"MNIST from {mnist.source}\n")
    print(
        f"{'split':<6} {'images':>7}  "
        + " ".join(f"{d:>5}" for d in range(data_lib.NUM_CLASSES))
        + f"  {'mean':>6} {'std':>6} {'zeros':>6}"
    )
    for name, s in result["splits"].items():
        print(
            f"{name:<6} {s['images']:>7,}  "
            + " ".join(f"{c:>5}" for c in s["label_counts"])
            + f"  {s['mean']:>6.4f} {s['std']:>6.4f} {100 * s['zero_fraction']:>5.1f}%"
        )
    print(f"\n{'':<18} {'report':>8} {'ours':>8}  source")
    for what, reference, ours, source in comparison_rows(splits, stats):
        print(f"{what:<18} {reference:>8} {ours:>8}  {source}")
    if args.quick:
        print("(--quick: subsets, so the sizes are not the report's)")
    print(f"\n{', '.join(files)}, eda.json and tensorboard/ are in {workdir}")
    return result


if __name__ == "__main__":
    main()
