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
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np

from experiments import simple_cnn
from mnist_jax import data as data_lib
from mnist_jax import denoising, parallel, pipeline, rundir, summaries, viz
from mnist_jax.checkpoints import has_checkpoints
from mnist_jax.cli import (
    finished_run,
    load_mnist_or_exit,
    resolve_workdir,
    start,
    training_errors,
)
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.fields import help_of
from mnist_jax.files import write_atomically, write_json
from mnist_jax.flags import ShowDefaults, add_run_flags, check_at_least_one, shown
from mnist_jax.metrics import format_classification_report
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NOISE_KINDS, NoiseConfig
from mnist_jax.rundir import restore_best_state
from mnist_jax.steps import score_split
from mnist_jax.train import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class NoisyConfig:
    """The chain's settings. Every stage uses the same seed and data subsets.

    noise: the training noise, and the fixed noise of the validation and
      test sets (report 000 does not say which; sigma 0.5 is heavy).
    classifier: the CNN of stages 1, 4 and 5 (experiments.simple_cnn's).
    denoiser: the autoencoder of stage 2; its noise is set from `noise`.
    curve_levels: Gaussian sigmas of the robustness curve, [0, 1] pixel units.
    """

    noise: NoiseConfig = NoiseConfig("gaussian", 0.5)
    classifier: TrainConfig = simple_cnn.CONFIG
    denoiser: TrainConfig = TrainConfig(
        model="denoising_ae",
        task="reconstruct",
        input_norm="unit",
        epochs=10,
        batch_size=64,
        learning_rate=1e-3,
        weight_decay=0.0,
    )
    curve_levels: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0
    train_size: int | None = None  # Stratified subsets for quick runs; None = all.
    test_size: int | None = None

    def __post_init__(self):
        if self.noise.kind == "none":
            raise ValueError(
                "the noisy chain needs noise: choose --noise gaussian, salt_pepper or speckle"
            )
        if not self.curve_levels or min(self.curve_levels) < 0:
            raise ValueError(f"curve_levels must be sigmas >= 0, got {self.curve_levels}")

    def stage(self, name: str) -> TrainConfig:
        """The TrainConfig of stage `name` (a key of STAGES)."""
        base = self.denoiser if name == "2_denoiser" else self.classifier
        noise = self.noise if name in ("1_noisy_cnn", "2_denoiser") else NoiseConfig()
        return dataclasses.replace(
            base, seed=self.seed, noise=noise, train_size=self.train_size, test_size=self.test_size
        )


STAGES = {
    "1_noisy_cnn": "the CNN on noisy images",
    "2_denoiser": "the denoising autoencoder, noisy -> clean",
    "4_denoised_cnn": "the CNN on denoised images",
    "5_clean_cnn": "the CNN on clean images",
}
DENOISED_FILE = pathlib.Path("3_denoised") / "denoised.npz"
# (name in tables, stage) of the three classifiers, and the test sets.
CLASSIFIERS = {
    "clean-trained": "5_clean_cnn",
    "noisy-trained": "1_noisy_cnn",
    "denoised-trained": "4_denoised_cnn",
}
TEST_SETS = ("clean", "noisy", "denoised")
# The classifier trained on each test set's kind of images: report 000's three results.
OWN_MODEL = {"clean": "clean-trained", "noisy": "noisy-trained", "denoised": "denoised-trained"}

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


def stage_dir(name: str, workdir: pathlib.Path, clean_run: pathlib.Path | None) -> pathlib.Path:
    """Where stage `name` runs: under workdir, or --clean-run for the clean CNN."""
    return clean_run if (name == "5_clean_cnn" and clean_run) else workdir / name


def run_stage(
    name: str,
    config: NoisyConfig,
    splits: data_lib.Splits,
    workdir: pathlib.Path,
    *,
    resume: bool,
    progress: bool,
    source: str,
    clean_run: pathlib.Path | None = None,
):
    """(summary, best state) of a stage: trained, continued, or reused when finished."""
    stage_config = config.stage(name)
    model = get_model(stage_config.model)
    run_dir = stage_dir(name, workdir, clean_run)
    if rundir.is_finished(run_dir):
        print(f"\n{name}: finished; reusing the best checkpoint in {run_dir}", flush=True)
        try:
            state = restore_best_state(stage_config, model, run_dir)
        except ResumeError as e:
            hint = (
                "--clean-run must be an experiments.simple_cnn run with this chain's seed and data"
                if run_dir == clean_run
                else "resume with the settings that trained it"
            )
            raise ResumeError(f"{name}: {e}; {hint}") from e
        return rundir.read_summary(run_dir), state
    if run_dir == clean_run:
        raise ResumeError(
            f"--clean-run {clean_run} holds no finished run (no metrics.json); "
            "run experiments.simple_cnn to the end first, or leave --clean-run out"
        )
    print(f"\n{name}: {STAGES[name]} ({stage_config.epochs} epochs)", flush=True)
    options = RunOptions(
        experiment=f"noisy/{name}",
        resume=resume and has_checkpoints(run_dir),
        progress=progress,
        extra={"data_source": source, "stage": name},
    )
    summary = train_and_evaluate(stage_config, model, splits, run_dir, options)
    return summary, summary["best_state"]


def denoise_stage(
    config: NoisyConfig,
    denoiser_state,
    noisy: data_lib.Splits,
    workdir: pathlib.Path,
    denoiser_step: int,
) -> data_lib.Splits:
    """Stage 3: the denoised train (a fixed noisy copy), val and test sets;
    read back from 3_denoised/denoised.npz when that denoiser made it."""
    path = workdir / DENOISED_FILE
    spec = config.stage("2_denoiser").step_config()
    sizes = {"train": len(noisy.train), "val": len(noisy.val), "test": len(noisy.test)}
    if path.is_file():
        with np.load(path) as saved:
            made_by = int(saved["denoiser_step"])
            if made_by == denoiser_step and all(saved[k].shape[0] == n for k, n in sizes.items()):
                print(f"\n3_denoised: reusing {path}", flush=True)
                return data_lib.Splits(
                    **{
                        k: data_lib.Split(
                            saved[k],
                            getattr(noisy, k).labels,
                            denoising.clean_images(getattr(noisy, k)),
                        )
                        for k in sizes
                    }
                )
        print(f"\n3_denoised: {path} came from another denoiser; denoising again", flush=True)
    print("\n3_denoised: denoising the noisy train, val and test sets", flush=True)
    noisy_train = denoising.noisy_copy(
        noisy.train, config.noise, pipeline.fixed_noise_key(config.seed, "train")
    )
    denoised = data_lib.Splits(
        **{
            k: denoising.denoise_split(denoiser_state, split, spec)
            for k, split in (("train", noisy_train), ("val", noisy.val), ("test", noisy.test))
        }
    )
    if parallel.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "denoiser_step": np.int64(denoiser_step),
            **{k: getattr(denoised, k).images for k in sizes},
        }
        write_atomically(path, lambda f: np.savez_compressed(f, **arrays), binary=True)
    return denoised


def score_classifiers(config: NoisyConfig, states: dict, test_sets: dict) -> dict:
    """{classifier: {test set: accuracy, loss, F1, per-class report, confusion matrix}}."""
    spec = config.classifier.step_config()
    return {
        name: {
            set_name: score_split(states[stage], split, config.classifier.eval_batch_size, spec)
            for set_name, split in test_sets.items()
        }
        for name, stage in CLASSIFIERS.items()
    }


def robustness_curve(
    config: NoisyConfig, states: dict, denoiser_state, test: data_lib.Split
) -> dict:
    """Test accuracy and denoiser PSNR at each Gaussian sigma of `curve_levels`.

    Every level uses the test set's fixed noise key, so the levels differ in
    sigma only (the same normal draws, scaled).
    """
    classify = config.classifier.step_config()
    denoise_spec = config.stage("2_denoiser").step_config()
    batch = config.classifier.eval_batch_size
    key = pipeline.fixed_noise_key(config.seed, "test")

    def accuracy(stage, split):
        return score_split(states[stage], split, batch, classify)["accuracy"]

    points = []
    for sigma in config.curve_levels:
        noisy = denoising.noisy_copy(test, NoiseConfig("gaussian", sigma), key)
        denoised = denoising.denoise_split(denoiser_state, noisy, denoise_spec)
        points.append(
            {
                "sigma": sigma,
                "clean-trained CNN, noisy input": accuracy("5_clean_cnn", noisy),
                "clean-trained CNN, denoised input": accuracy("5_clean_cnn", denoised),
                "noisy-trained CNN, noisy input": accuracy("1_noisy_cnn", noisy),
                "denoised-trained CNN, denoised input": accuracy("4_denoised_cnn", denoised),
                "noisy PSNR": denoising.image_quality(noisy.images, test.images)["psnr"],
                "denoised PSNR": denoising.image_quality(denoised.images, test.images)["psnr"],
            }
        )
        print(
            f"sigma {sigma:.2f}: "
            + ", ".join(
                f"{k} {100 * v:.2f} %" for k, v in points[-1].items() if k.endswith("input")
            ),
            flush=True,
        )
    return {"noise": "gaussian", "points": points}


CURVES = (
    "clean-trained CNN, noisy input",
    "clean-trained CNN, denoised input",
    "noisy-trained CNN, noisy input",
    "denoised-trained CNN, denoised input",
)


def write_figures(workdir: pathlib.Path, results: dict, test_sets: dict) -> None:
    """robustness.png, samples.png, confusion_matrices.png (every model on
    every test set) and TensorBoard: the same figures, and the scores."""
    points = results["robustness"]["points"]
    curve = viz.figure_to_array(
        viz.curves_figure(
            {name: [(p["sigma"], p[name]) for p in points] for name in CURVES},
            xlabel="Gaussian noise sigma ([0, 1] pixels)",
            ylabel="test accuracy (%)",
            title="Robustness to Gaussian noise",
            marks={"training noise": results["noise"]["level"]}
            if results["noise"]["kind"] == "gaussian"
            else None,
        )
    )
    viz.save_png(curve, workdir / "robustness.png")
    samples = viz.figure_to_array(
        viz.image_rows_figure(
            {name: split.images[:10] / 255.0 for name, split in test_sets.items()},
            f"test images: clean / {results['noise']['kind']} {results['noise']['level']} / denoised",
        )
    )
    viz.save_png(samples, workdir / "samples.png")
    viz.save_png(
        viz.figure_to_array(
            viz.confusion_matrices_figure(
                {
                    f"{name} CNN": {
                        f"{set_name} test": score["confusion_matrix"]
                        for set_name, score in by_set.items()
                    }
                    for name, by_set in results["scores"].items()
                }
            )
        ),
        workdir / "confusion_matrices.png",
    )
    with summaries.MetricWriter(workdir / "tensorboard") as writer:
        for p in points:  # Steps are sigma in hundredths: TensorBoard wants integers.
            writer.scalars(
                round(100 * p["sigma"]),
                {
                    f"robustness/{k.replace(', ', '/').replace(' ', '_')}": v
                    for k, v in p.items()
                    if k != "sigma"
                },
            )
        writer.image("noisy/robustness", 0, curve)
        writer.image("noisy/samples", 0, samples)
        for name, by_set in results["scores"].items():
            for set_name, score in by_set.items():
                writer.image(
                    f"confusion/{name}_cnn/{set_name}_test",
                    0,
                    viz.confusion_matrix_image(
                        np.array(score["confusion_matrix"]), f"{name} CNN, {set_name} test set"
                    ),
                )
                writer.scalars(0, {f"test/{name}_cnn/{set_name}/accuracy": score["accuracy"]})
        for name, quality in results["quality"].items():
            writer.scalars(0, {f"quality/{name}/{k}": v for k, v in quality.items()})


def tables(results: dict) -> str:
    """The report-vs-ours table, the accuracy of every (model, test set), and
    the denoising quality, as Markdown."""
    scores, ref, own = results["scores"], REFERENCE, OWN_MODEL
    lines = [
        "| test set | model | report accuracy | ours | report loss | ours | ours F1 (macro) |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name in TEST_SETS:
        s = scores[own[set_name]][set_name]
        lines.append(
            f"| {set_name} | {own[set_name]} CNN | {100 * ref[set_name]['accuracy']:.2f} % | "
            f"{100 * s['accuracy']:.2f} % | {ref[set_name]['loss']:.4f} | {s['loss']:.4f} | "
            f"{s['f1_macro']:.4f} |"
        )
    lines += [
        "",
        "Test accuracy of every CNN on every test set:",
        "",
        "| model \\ test set | " + " | ".join(TEST_SETS) + " |",
        "|---|" + "---|" * len(TEST_SETS),
    ]
    for name, by_set in scores.items():
        lines.append(
            f"| {name} CNN | "
            + " | ".join(f"{100 * by_set[t]['accuracy']:.2f} %" for t in TEST_SETS)
            + " |"
        )
    lines += [
        "",
        "Test images against the clean ones:",
        "",
        "| images | MSE | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
    ]
    for name, q in results["quality"].items():
        lines.append(f"| {name} | {q['mse']:.5f} | {q['psnr']:.2f} | {q['ssim']:.4f} |")
    lines += [
        "",
        "Robustness (Gaussian sigma; test accuracy):",
        "",
        "| sigma | " + " | ".join(CURVES) + " | denoised PSNR (dB) |",
        "|---|" + "---|" * (len(CURVES) + 1),
    ]
    for p in results["robustness"]["points"]:
        lines.append(
            f"| {p['sigma']:.2f} | "
            + " | ".join(f"{100 * p[c]:.2f} %" for c in CURVES)
            + f" | {p['denoised PSNR']:.2f} |"
        )
    return "\n".join(lines)


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
    """Runs (or reuses) every stage and scores them; returns noisy.json's contents."""
    if not resume and any((workdir / name).exists() for name in (*STAGES, DENOISED_FILE.parent)):
        raise ResumeError(
            f"{workdir} already holds a noisy chain. Pass --resume to reuse its finished "
            "stages, or choose another --workdir; nothing was changed."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    noisy = denoising.noisy_splits(splits, config.noise, config.seed)

    def stage(name, data):
        return run_stage(
            name,
            config,
            data,
            workdir,
            resume=resume,
            progress=progress,
            source=source,
            clean_run=clean_run,
        )

    summaries_, states = {}, {}
    if clean_run:  # Checked first: a wrong --clean-run fails before any training.
        summaries_["5_clean_cnn"], states["5_clean_cnn"] = stage("5_clean_cnn", splits)
    for name, data in (("1_noisy_cnn", noisy), ("2_denoiser", noisy)):
        summaries_[name], states[name] = stage(name, data)
    denoised = denoise_stage(
        config,
        states["2_denoiser"],
        noisy,
        workdir,
        summaries_["2_denoiser"]["evaluated_checkpoint"]["step"],
    )
    for name, data in (("4_denoised_cnn", denoised), ("5_clean_cnn", splits)):
        if name not in states:
            summaries_[name], states[name] = stage(name, data)

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
        "stages": {
            name: {
                "run_dir": str(stage_dir(name, workdir, clean_run)),
                "train_seconds": s["train_seconds"],
                "test": _scalars(s["test"]),
            }
            for name, s in summaries_.items()
        },
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
        f"val {len(splits.val)}, test {len(splits.test)} examples from {mnist.source}; run dir {workdir}",
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
    print(tables(results))
    print(
        f"\nnoisy.json, robustness.png, samples.png, confusion_matrices.png, tensorboard/ and the "
        f"stages' run dirs are in {workdir}"
    )


if __name__ == "__main__":
    main()
