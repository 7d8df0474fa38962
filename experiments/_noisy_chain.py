"""The noisy chain's stages and its scoring (experiments.noisy runs them in order).

Its settings (NoisyConfig), the stages' run directories, a stage trained
or reused (run_stage), every stage in the chain's order (train_stages), the
denoised sets (denoise_stage), every classifier on every test set
(score_classifiers) and the robustness curve.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from experiments import simple_cnn
from mnist_jax import data as data_lib
from mnist_jax import denoising, parallel, pipeline, rundir
from mnist_jax.checkpoints import has_checkpoints
from mnist_jax.config import ResumeError, TrainConfig
from mnist_jax.files import write_atomically
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import NoiseConfig
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
    """One stage's run: trained, continued from its checkpoints, or reused when finished.

    Args:
      name: the stage, a key of STAGES.
      config: the chain's settings; the stage's TrainConfig is config.stage(name).
      splits: the data it trains, selects and is tested on (noisy, denoised or clean).
      workdir: the chain's folder; the stage runs in workdir/<name>.
      resume: continue an interrupted stage from its newest checkpoint.
      progress: show the progress bar.
      source: where MNIST came from, for the stage's metrics.json.
      clean_run: a finished experiments.simple_cnn run to reuse as 5_clean_cnn.

    Returns:
      (the stage's summary, as metrics.json holds it, the state of its best
      checkpoint).

    Raises:
      ResumeError: a finished run of other settings, or a clean_run that is
        not a finished run.
    """
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
    read back from 3_denoised/denoised.npz when that denoiser made it.

    Args:
      config: the chain's settings (its noise, seed and denoiser).
      denoiser_state: the best state of stage 2, the denoiser.
      noisy: the noisy splits (the train split's clean images are noised
        once, with the train split's fixed noise key).
      workdir: the chain's folder; denoised.npz is written under it (by the
        main process).
      denoiser_step: the step of the denoiser's checkpoint, saved beside the
        images: another denoiser's images are made again.

    Returns:
      The denoised splits: denoised images, the noisy splits' labels, the
      clean images as targets.
    """
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


def train_stages(
    config: NoisyConfig,
    splits: data_lib.Splits,
    noisy: data_lib.Splits,
    workdir: pathlib.Path,
    *,
    resume: bool,
    progress: bool,
    source: str,
    clean_run: pathlib.Path | None = None,
) -> tuple[dict, dict, data_lib.Splits]:
    """Every stage in the chain's order: the noisy CNN, the denoiser, the
    denoised sets, the denoised CNN, the clean CNN (first, when --clean-run
    names it: a wrong one fails before any training).

    Args:
      config: the chain's settings.
      splits: the clean splits.
      noisy: the same splits with noise (denoising.noisy_splits).
      workdir: the chain's folder, a run directory per stage under it.
      resume: continue an interrupted stage from its newest checkpoint.
      progress: show the progress bar.
      source: where MNIST came from, for each stage's metrics.json.
      clean_run: a finished experiments.simple_cnn run to reuse as 5_clean_cnn.

    Returns:
      ({stage: summary}, {stage: best state}, the denoised splits).
    """

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

    summaries, states = {}, {}
    if clean_run:  # Checked first: a wrong --clean-run fails before any training.
        summaries["5_clean_cnn"], states["5_clean_cnn"] = stage("5_clean_cnn", splits)
    for name, data in (("1_noisy_cnn", noisy), ("2_denoiser", noisy)):
        summaries[name], states[name] = stage(name, data)
    denoised = denoise_stage(
        config,
        states["2_denoiser"],
        noisy,
        workdir,
        summaries["2_denoiser"]["evaluated_checkpoint"]["step"],
    )
    for name, data in (("4_denoised_cnn", denoised), ("5_clean_cnn", splits)):
        if name not in states:
            summaries[name], states[name] = stage(name, data)
    return summaries, states, denoised


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
