"""Few labels: report 003's classifiers on its pretrained convolutional encoder.

    python -m experiments.few_labels           # 100, 300, 1,000, 3,000 labels
    python -m experiments.few_labels --quick   # 100 labels, a short pretraining: a smoke test
    python -m experiments.few_labels --labels 50 500 --steps 1000

1. Pretrain the convolutional autoencoder (latent 12) on the training
   images, without labels (as experiments.conv_ae).
2. For each number of labels n (a seeded, stratified subset of the training
   images) train, for the same number of steps:
     scratch      encoder + MLP from random initialisation
     frozen       pretrained encoder, frozen; only the MLP trains
     fine-tuned   pretrained encoder + MLP, all trained
     cls-decoding pretrained encoder and decoder + MLP, trained on
                  cross-entropy + reconstruction MSE (ClassifierDecoding)
3. A table of test accuracy (n x method), a plot against n
   (accuracy_vs_labels.png, TensorBoard) and few_labels.json.

Every run keeps its checkpoints under <workdir>/n<labels>/<method>;
--resume skips the finished runs and continues the interrupted one.
The best checkpoint of each run is chosen on the same 500 labelled
validation images for every n and method. Report 003 publishes no number
for this comparison; our results are in docs/results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from mnist_jax import data as data_lib
from mnist_jax import parallel, rundir, summaries, viz
from mnist_jax.cli import finished_run, load_mnist_or_exit, resolve_workdir, start, training_errors
from mnist_jax.config import TrainConfig
from mnist_jax.files import write_json
from mnist_jax.flags import ShowDefaults, add_run_flags, check_at_least_one, shown
from mnist_jax.models import get_model
from mnist_jax.options import RunOptions
from mnist_jax.pipeline import num_batches
from mnist_jax.train import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class FewLabelsConfig:
    labels: tuple[int, ...] = (100, 300, 1000, 3000)
    steps: int = 600  # Optimizer steps of every labelled run, whatever n.
    val_size: int = 500  # Labelled validation images for checkpoint selection.
    pretrain: TrainConfig = TrainConfig(
        model="conv_ae", task="reconstruct", input_norm="unit", epochs=10, weight_decay=0.0
    )
    classifier: TrainConfig = TrainConfig(
        model="encoder_classifier",
        input_norm="unit",
        learning_rate=1e-3,
        weight_decay=0.0,
        checkpoint_every_steps=10_000,
        log_every_steps=50,
    )
    seed: int = 0

    def __post_init__(self):
        if not self.labels or min(self.labels) < 10:
            raise ValueError(
                f"labels must be numbers >= 10 (one per class at least), got {self.labels}"
            )
        if self.steps < 1 or self.val_size < 10:
            raise ValueError(
                f"steps must be >= 1 and val_size >= 10, got {self.steps}, {self.val_size}"
            )


CONFIG = FewLabelsConfig()
QUICK = FewLabelsConfig(
    labels=(100,),
    steps=40,
    val_size=200,
    pretrain=dataclasses.replace(
        CONFIG.pretrain,
        epochs=1,
        train_size=3000,
        test_size=500,
        log_every_steps=10,
        checkpoint_every_steps=1000,
    ),
    classifier=dataclasses.replace(CONFIG.classifier, test_size=500, log_every_steps=10),
)

METHODS = ("scratch", "frozen", "fine-tuned", "cls-decoding")


def method_config(base: TrainConfig, method: str, epochs: int) -> TrainConfig:
    """The labelled run of `method`: model, task and which groups train."""
    if method == "cls-decoding":
        return dataclasses.replace(
            base, model="classifier_decoding", task="classify_decode", epochs=epochs
        )
    trainable = ("head",) if method == "frozen" else ()
    return dataclasses.replace(base, epochs=epochs, trainable=trainable)


def pretrained_groups(method: str, autoencoder_params: dict) -> dict | None:
    if method == "scratch":
        return None
    if method == "cls-decoding":
        return {"encoder": autoencoder_params["encoder"], "decoder": autoencoder_params["decoder"]}
    return {"encoder": autoencoder_params["encoder"]}


def _finished(run_dir: pathlib.Path) -> dict | None:
    return rundir.read_summary(run_dir) if rundir.is_finished(run_dir) else None


def run(
    config: FewLabelsConfig,
    splits: data_lib.Splits,
    workdir: pathlib.Path,
    *,
    resume: bool,
    progress: bool,
    source: str,
) -> dict:
    """Pretrains, then trains every (n, method); finished runs are reused.

    Args:
      config: the experiment's settings.
      splits: train (the pretraining's images, and the labelled subsets'),
        val (the labelled validation subset's) and test.
      workdir: the experiment's folder: pretrain/ and n<labels>/<method>/.
      resume: continue the runs whose folders exist.
      progress: a progress bar on a terminal.
      source: where MNIST was read from, recorded in each labelled run.

    Returns:
      The results: {"pretrain": {"test", "train_seconds"}, "runs":
      [{"labels", "method", "test_accuracy", "train_seconds"} per run]}.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"pretraining the convolutional autoencoder on {len(splits.train)} unlabelled images",
        flush=True,
    )
    pretrain_dir = workdir / "pretrain"
    options = RunOptions(
        experiment="few_labels/pretrain", resume=resume and pretrain_dir.exists(), progress=progress
    )
    pre = train_and_evaluate(config.pretrain, get_model("conv_ae"), splits, pretrain_dir, options)
    ae_params = pre["best_state"].params
    val = splits.val.take(
        data_lib.stratified_subset(splits.val.labels, config.val_size, config.seed)
    )

    results = {"pretrain": {"test": pre["test"], "train_seconds": pre["train_seconds"]}, "runs": []}
    for n in config.labels:
        labelled = splits.train.take(
            data_lib.stratified_subset(splits.train.labels, n, config.seed)
        )
        few = data_lib.Splits(train=labelled, val=val, test=splits.test)
        steps_per_epoch = num_batches(len(labelled), config.classifier.batch_size)
        epochs = -(-config.steps // steps_per_epoch)
        for method in METHODS:
            run_dir = workdir / f"n{n}" / method
            summary = _finished(run_dir)
            if summary is None:
                print(
                    f"\n{n} labels, {method}: {epochs} epochs of {steps_per_epoch} steps",
                    flush=True,
                )
                cfg = method_config(config.classifier, method, epochs)
                options = RunOptions(
                    experiment=f"few_labels/n{n}/{method}",
                    resume=resume and run_dir.exists(),
                    progress=progress,
                    pretrained=pretrained_groups(method, ae_params),
                    extra={"labels": n, "method": method, "data_source": source},
                )
                summary = train_and_evaluate(cfg, get_model(cfg.model), few, run_dir, options)
            results["runs"].append(
                {
                    "labels": n,
                    "method": method,
                    "test_accuracy": summary["test"]["accuracy"],
                    "train_seconds": summary["train_seconds"],
                }
            )
    return results


def results_table(results: dict) -> str:
    runs = results["runs"]
    labels = sorted({r["labels"] for r in runs})
    acc = {(r["labels"], r["method"]): r["test_accuracy"] for r in runs}
    header = "| labels | " + " | ".join(METHODS) + " |"
    lines = [header, "|" + "---|" * (len(METHODS) + 1)]
    for n in labels:
        lines.append(f"| {n:,} | " + " | ".join(f"{100 * acc[n, m]:.2f} %" for m in METHODS) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        formatter_class=ShowDefaults,
        prog="python -m experiments.few_labels",
        description="Report 003's pretrained-encoder classifiers with few labels.",
    )
    add = parser.add_argument
    add(
        "--labels",
        type=int,
        nargs="+",
        help=f"numbers of labelled training images {shown(' '.join(map(str, CONFIG.labels)))}",
    )
    add("--steps", type=int, help=f"optimizer steps of each labelled run {shown(CONFIG.steps)}")
    add(
        "--pretrain-epochs",
        type=int,
        help=f"autoencoder pretraining epochs {shown(CONFIG.pretrain.epochs)}",
    )
    add(
        "--seed",
        type=int,
        help=f"seed for the subsets, init, shuffling and dropout {shown(CONFIG.seed)}",
    )
    add_run_flags(
        parser,
        "few_labels",
        resume_help="skip finished runs, continue the interrupted one; does "
        "nothing if every run is finished",
        quick_help=f"a smoke test: {QUICK.pretrain.epochs} pretraining epoch on a stratified "
        f"{QUICK.pretrain.train_size:,} training images, then {QUICK.steps} steps with "
        f"{' and '.join(map(str, QUICK.labels))} labels, scored on "
        f"{QUICK.classifier.test_size:,} test images",
    )

    def prepare(args):
        check_at_least_one(args, "steps", "pretrain_epochs")
        config = QUICK if args.quick else CONFIG
        seed = config.seed if args.seed is None else args.seed
        # --dtype and --data-placement apply to every run of the experiment.
        shared = {
            k: getattr(args, k) for k in ("dtype", "data_placement") if getattr(args, k) is not None
        }
        pretrain_epochs = (
            config.pretrain.epochs if args.pretrain_epochs is None else args.pretrain_epochs
        )
        config = dataclasses.replace(
            config,
            labels=tuple(args.labels) if args.labels else config.labels,
            steps=config.steps if args.steps is None else args.steps,
            seed=seed,
            pretrain=dataclasses.replace(
                config.pretrain, seed=seed, epochs=pretrain_epochs, **shared
            ),
            classifier=dataclasses.replace(config.classifier, seed=seed, **shared),
        )
        mesh = parallel.data_mesh()
        for part in (config.pretrain, config.classifier):
            parallel.check_batch_size(part.batch_size, mesh, "training batch size")
        return config, seed, resolve_workdir("few_labels", args.workdir, args.resume)

    args, (config, seed, workdir) = start(parser, argv, prepare)
    if (results := finished_run(args, workdir, "few_labels.json")) is None:
        results = train_all(args, parser, config, seed, workdir)
    print(
        f"\nTest accuracy ({results['test_images']} test images) after {config.steps} steps "
        "per run; "
        f"autoencoder test MSE {results['pretrain']['test']['mse']:.5f}."
    )
    print("Report 003 publishes no number for this comparison.\n")
    print(results_table(results))
    print(f"\nfew_labels.json, accuracy_vs_labels.png and every run's directory are in {workdir}")
    return results


def train_all(args, parser, config: FewLabelsConfig, seed: int, workdir: pathlib.Path) -> dict:
    """Pretrains and trains every labelled run (or, resumed, reuses the
    finished ones); writes the plot, its TensorBoard image and few_labels.json.

    Args:
      args: the parsed flags (the data flags, --resume, --no-progress).
      parser: the parser, for a usage error (cli.training_errors).
      config: the experiment's settings.
      seed: the seed of the splits.
      workdir: the experiment's folder.

    Returns:
      few_labels.json's contents: "config", "test_images" and `run`'s results.
    """
    mnist = load_mnist_or_exit(args)
    p = config.pretrain
    splits = data_lib.make_splits(
        mnist,
        val_fraction=p.val_fraction,
        seed=seed,
        train_size=p.train_size,
        test_size=config.classifier.test_size,
    )
    with training_errors(parser, args):
        results = run(
            config,
            splits,
            workdir,
            resume=args.resume,
            progress=not args.no_progress,
            source=mnist.source,
        )
    curves = {
        m: [(r["labels"], r["test_accuracy"]) for r in results["runs"] if r["method"] == m]
        for m in METHODS
    }
    image = viz.figure_to_array(viz.accuracy_vs_labels_figure(curves))
    viz.save_png(image, workdir / "accuracy_vs_labels.png")
    with summaries.MetricWriter(workdir / "tensorboard") as writer:
        writer.image("few_labels/accuracy_vs_labels", 0, image)
    results = {"config": dataclasses.asdict(config), "test_images": len(splits.test), **results}
    write_json(workdir / "few_labels.json", results)
    return results


if __name__ == "__main__":
    main()
