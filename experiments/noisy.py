"""Noisy MNIST end to end (report 000): train on noise, denoise, train on the denoised data.

    python -m experiments.noisy            # Gaussian sigma 0.5; 3 CNNs of 10 epochs and a denoiser
    python -m experiments.noisy --quick    # 1 epoch each on 3,000 images: a smoke test
    python -m experiments.noisy --noise salt_pepper --noise-level 0.2
    python -m experiments.noisy --clean-run runs/simple_cnn/<time>   # reuse a clean CNN

The chain, one run directory per stage under --workdir:
  1_noisy_cnn     report 000's simple CNN trained on noisy images (new noise
                  every step) and selected on the fixed noisy validation set;
  2_denoiser      a convolutional denoising autoencoder (conv + transposed
                  conv) trained noisy -> clean;
  3_denoised      the noisy train/val/test sets denoised by it (denoised.npz);
  4_denoised_cnn  the CNN trained and selected on the denoised sets;
  5_clean_cnn     the CNN trained on clean images, as experiments.simple_cnn
                  (or --clean-run: the best checkpoint of such a run).
Then every CNN is scored on the clean, noisy and denoised test sets, the
denoiser's PSNR/SSIM is measured against the clean test images, and a
robustness curve sweeps Gaussian sigma 0 to 1. Written to --workdir:
noisy.json, robustness.png, samples.png (clean / noisy / denoised),
confusion_matrices.png and TensorBoard. --resume reuses the finished
stages and continues the interrupted one from its newest checkpoint.

Report 000 gives 99.10 % test accuracy and test loss 0.0264 for the clean,
noisy and denoised data alike (its three sections carry the same copied
numbers) and does not say which noise it used. Our results are in
docs/results.md.

This module is the command and `run`, the chain from its first stage to
noisy.json; the stages and their scoring are in experiments/_noisy_chain.py,
the figures and tables in experiments/_noisy_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from experiments import simple_cnn
from experiments._noisy_chain import CLASSIFIERS as CLASSIFIERS  # Read as noisy.CLASSIFIERS.
from experiments._noisy_chain import (
    DENOISED_FILE,
    STAGES,
    TEST_SETS,
    NoisyConfig,
    robustness_curve,
    score_classifiers,
    stage_dir,
    train_stages,
)
from experiments._noisy_report import OWN_MODEL, tables, write_figures
from mnist_jax import data as data_lib
from mnist_jax import denoising, parallel
from mnist_jax.cli import (
    finished_run,
    load_mnist_or_exit,
    resolve_workdir,
    start,
    training_errors,
)
from mnist_jax.config import ResumeError
from mnist_jax.fields import help_of
from mnist_jax.files import write_json
from mnist_jax.flags import ShowDefaults, add_run_flags, check_at_least_one, shown
from mnist_jax.metrics import format_classification_report
from mnist_jax.pipeline import NOISE_KINDS, NoiseConfig

CONFIG = NoisyConfig()
_QUICK_RUN = dict(epochs=1, log_every_steps=10, checkpoint_every_steps=20)
QUICK = NoisyConfig(
    classifier=dataclasses.replace(simple_cnn.CONFIG, **_QUICK_RUN),
    denoiser=dataclasses.replace(CONFIG.denoiser, **_QUICK_RUN),
    curve_levels=(0.0, 0.5, 1.0),
    train_size=3000,
    test_size=500,
)

# Report 000's "Results": one copied number for all three sets.
REFERENCE = {
    "source": "000 CNN and Autoencoders, PyTorch",
    **{name: {"accuracy": 0.9910, "loss": 0.0264} for name in TEST_SETS},
}


def run(
    config: NoisyConfig,
    splits: data_lib.Splits,
    workdir: pathlib.Path,
    *,
    resume: bool,
    progress: bool,
    source: str,
    clean_run: pathlib.Path | None = None,
) -> dict:
    """Runs (or reuses) every stage and scores them; writes the figures,
    TensorBoard and noisy.json into workdir (the main process).

    Args:
      config: the chain's settings.
      splits: the clean splits; the noisy ones are made from them.
      workdir: the chain's folder, a run directory per stage under it.
      resume: reuse the finished stages, continue the interrupted one; without
        it, a workdir that holds a chain is refused.
      progress: show the progress bar.
      source: where MNIST came from, for noisy.json and the stages' metrics.json.
      clean_run: a finished experiments.simple_cnn run to reuse as the clean CNN.

    Returns:
      noisy.json's contents: the settings, data, devices, each stage's run,
      every classifier's scores on every test set, the denoising quality and
      the robustness curve.

    Raises:
      ResumeError: workdir holds a chain and resume is off, or a stage cannot
        be reused.
    """
    if not resume and any((workdir / name).exists() for name in (*STAGES, DENOISED_FILE.parent)):
        raise ResumeError(
            f"{workdir} already holds a noisy chain. Pass --resume to reuse its finished "
            "stages, or choose another --workdir; nothing was changed."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    noisy = denoising.noisy_splits(splits, config.noise, config.seed)
    summaries_, states, denoised = train_stages(
        config,
        splits,
        noisy,
        workdir,
        resume=resume,
        progress=progress,
        source=source,
        clean_run=clean_run,
    )

    print("\nscoring every CNN on the clean, noisy and denoised test sets", flush=True)
    test_sets = {"clean": splits.test, "noisy": noisy.test, "denoised": denoised.test}
    results = {
        "config": dataclasses.asdict(config),
        "noise": dataclasses.asdict(config.noise),
        "data": {
            "source": source,
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
        },
        "devices": parallel.describe(parallel.data_mesh()),
        "stages": stage_records(summaries_, workdir, clean_run),
        "scores": score_classifiers(config, states, test_sets),
        "quality": {
            name: denoising.image_quality(test_sets[name].images, splits.test.images)
            for name in ("noisy", "denoised")
        },
    }
    print("\nrobustness curve", flush=True)
    results["robustness"] = robustness_curve(config, states, states["2_denoiser"], splits.test)
    if parallel.is_main_process():
        write_figures(workdir, results, test_sets)
        write_json(workdir / "noisy.json", results)
    return results


def stage_records(summaries_: dict, workdir: pathlib.Path, clean_run: pathlib.Path | None) -> dict:
    """noisy.json's "stages": each stage's run dir, training time and test scalars."""
    return {
        name: {
            "run_dir": str(stage_dir(name, workdir, clean_run)),
            "train_seconds": s["train_seconds"],
            "test": _scalars(s["test"]),
        }
        for name, s in summaries_.items()
    }


def _scalars(test: dict) -> dict:
    return {k: v for k, v in test.items() if isinstance(v, float)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults,
        prog="python -m experiments.noisy",
        description="Report 000's noisy MNIST chain: noisy CNN, denoiser, "
        "denoised CNN, clean CNN, robustness curve.",
    )
    add = parser.add_argument
    add(
        "--noise",
        choices=[k for k in NOISE_KINDS if k != "none"],
        help=f"noise kind {shown(CONFIG.noise.kind)}",
    )
    add(
        "--noise-level",
        type=float,
        help=f"{help_of(NoiseConfig, 'level')} {shown(CONFIG.noise.level)}",
    )
    add("--epochs", type=int, help=f"epochs of each CNN {shown(CONFIG.classifier.epochs)}")
    add(
        "--denoiser-epochs",
        type=int,
        help=f"epochs of the denoising autoencoder {shown(CONFIG.denoiser.epochs)}",
    )
    add(
        "--seed",
        type=int,
        help=f"seed for the split, init, shuffling, dropout and every noise {shown(CONFIG.seed)}",
    )
    add(
        "--clean-run",
        type=pathlib.Path,
        help="a finished experiments.simple_cnn run dir to use as the clean-trained CNN, same seed "
        "(default: train it here)",
    )
    add_run_flags(
        parser,
        "noisy",
        resume_help="reuse the finished stages, continue the interrupted one; "
        "does nothing if the chain is finished",
        quick_help=f"a smoke test: {QUICK.classifier.epochs} epoch per CNN and "
        f"{QUICK.denoiser.epochs} for the denoiser, on a stratified {QUICK.train_size:,} "
        f"training images, scored on {QUICK.test_size:,} test images at noise levels "
        f"{', '.join(map(str, QUICK.curve_levels))}",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> NoisyConfig:
    check_at_least_one(args, "epochs", "denoiser_epochs")
    config = QUICK if args.quick else CONFIG
    noise = NoiseConfig(
        args.noise or config.noise.kind,
        config.noise.level if args.noise_level is None else args.noise_level,
    )
    shared = {
        k: getattr(args, k) for k in ("dtype", "data_placement") if getattr(args, k) is not None
    }
    config = dataclasses.replace(
        config,
        noise=noise,
        seed=config.seed if args.seed is None else args.seed,
        classifier=dataclasses.replace(
            config.classifier,
            epochs=config.classifier.epochs if args.epochs is None else args.epochs,
            **shared,
        ),
        denoiser=dataclasses.replace(
            config.denoiser,
            epochs=config.denoiser.epochs if args.denoiser_epochs is None else args.denoiser_epochs,
            **shared,
        ),
    )
    mesh = parallel.data_mesh()
    for part in (config.classifier, config.denoiser):
        parallel.check_batch_size(part.batch_size, mesh, "training batch size")
    return config


def main(argv=None) -> dict:
    parser = build_parser()
    args, (config, workdir) = start(
        parser,
        argv,
        lambda args: (config_from_args(args), resolve_workdir("noisy", args.workdir, args.resume)),
    )
    results = finished_run(args, workdir, "noisy.json") or train_chain(
        args, parser, config, workdir
    )
    print_results(results, config, workdir)
    return results


def train_chain(args, parser, config: NoisyConfig, workdir: pathlib.Path) -> dict:
    """Loads MNIST and runs (or, resumed, reuses) every stage; noisy.json's contents."""
    mnist = load_mnist_or_exit(args)
    splits = data_lib.make_splits(
        mnist,
        val_fraction=config.classifier.val_fraction,
        seed=config.seed,
        train_size=config.train_size,
        test_size=config.test_size,
    )
    print(
        f"noisy: {config.noise.kind} noise, level {config.noise.level}; train {len(splits.train)}, "
        f"val {len(splits.val)}, test {len(splits.test)} examples from {mnist.source}; "
        f"run dir {workdir}",
        flush=True,
    )
    with training_errors(parser, args):
        return run(
            config,
            splits,
            workdir,
            resume=args.resume,
            progress=not args.no_progress,
            source=mnist.source,
            clean_run=args.clean_run,
        )


def print_results(results: dict, config: NoisyConfig, workdir: pathlib.Path) -> None:
    """Each CNN's classification report on its own test set, then the tables."""
    for set_name, name in OWN_MODEL.items():
        print(f"\n{name} CNN on the {set_name} test set:")
        print(format_classification_report(results["scores"][name][set_name]))
    print(
        f"\nTest set ({results['data']['test']} images), {config.noise.kind} noise "
        f"{config.noise.level}; report 000 beside this run:\n"
    )
    print(tables(results, REFERENCE))
    print(
        f"\nnoisy.json, robustness.png, samples.png, confusion_matrices.png, tensorboard/ and the "
        f"stages' run dirs are in {workdir}"
    )


if __name__ == "__main__":
    main()
