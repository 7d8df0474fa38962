"""A run's weights as a PyTorch state dict, and PyTorch state dicts back in.

    python -m mnist_jax.export --checkpoint RUN_DIR OUT.safetensors [--raw] [--force]

writes the best checkpoint's weights (the moving average where the run kept
one; `--raw`: the raw weights) as the state dict of the model's class in
mnist_jax.torch_models, in a safetensors file (written with safetensors'
numpy API: no torch needed). Its metadata says which class, the input
scaling and which weights. An existing OUT is refused unless `--force`.
Models without a one-to-one PyTorch counterpart are refused (status 2).

`load_torch_weights(path, model)` reads such a state dict (.safetensors,
or a .pth that torch.save wrote, through mnist_jax.pretrained's restricted
unpickler) into our variables, and `inference_state` makes them a state
that `steps.infer` and `steps.evaluate` take.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

from mnist_jax import models, rundir, torch_layout
from mnist_jax.files import write_atomically
from mnist_jax.pretrained import WeightsError, load_state_dict
from mnist_jax.steps import TrainState

# torch_models' class of each exportable model (mnist_jax.torch_models.MODELS).
TORCH_CLASSES = {
    "cnn": "CNN",
    "simple_cnn": "SimpleCNN",
    "deep_cnn": "DeepCNN",
    "vit": "ViT",
    "linear_ae": "LinearAutoencoder",
    "conv_ae": "ConvAutoencoder",
    "denoising_ae": "DenoisingAutoencoder",
}

# Why the other models have no PyTorch definition to export to.
NOT_EXPORTED = {
    "vgg16": "transfer learning behind our resizing of the digits, not a report's layers",
    "alexnet": "transfer learning behind our resizing of the digits, not a report's layers",
    "strided_cnn": "our model beyond the reports, with no PyTorch original",
    "speed_cnn": "our model beyond the reports, with no PyTorch original",
    "encoder_classifier": "report 003 does not give its classifier's layers (ours are our own)",
    "classifier_decoding": "report 003 does not give its classifier's layers (ours are our own)",
}


class ExportError(Exception):
    """A run that cannot be exported, or an output that must not be written."""


def refusal(model: str) -> str | None:
    """The sentence refusing to export `model`; None where it can be."""
    if model in torch_layout.LAYOUTS:
        return None
    why = NOT_EXPORTED.get(model, "it has no PyTorch definition in mnist_jax.torch_models")
    return (
        f"{model} has no one-to-one PyTorch counterpart ({why}); the models that export "
        f"are {', '.join(sorted(torch_layout.LAYOUTS))}"
    )


def _check_out(out: pathlib.Path, force: bool) -> None:
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a folder: create it first, or name another OUT")
    if out.is_dir():
        raise ExportError(
            f"{out} is a folder: name the file to write, e.g. {out}/model.safetensors"
        )
    if out.exists() and not force:
        raise ExportError(f"{out} exists: nothing was written (--force replaces it)")


def export_run(run_dir, out, *, raw: bool = False, force: bool = False) -> dict:
    """Writes the run's best weights to `out` as a PyTorch state dict
    (safetensors); returns the file's metadata. ExportError or
    rundir.RunError where it cannot."""
    run_dir, out = pathlib.Path(run_dir).expanduser(), pathlib.Path(out).expanduser()
    summary = rundir.read_summary(run_dir)
    model = summary.get("config", {}).get("model", "?")
    if sentence := refusal(model):
        raise ExportError(sentence)
    _check_out(out, force)
    run = rundir.load_run(run_dir, average=not raw)
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    step = int(run.state.step)
    try:
        tensors = torch_layout.to_state_dict(model, jax.device_get(variables), step)
    except torch_layout.LayoutError as e:
        raise ExportError(f"cannot export {run_dir}: {e}") from e
    averaged = bool(run.state.ema) and not raw
    metadata = {
        "model": model,
        "torch_class": f"mnist_jax.torch_models.{TORCH_CLASSES[model]}",
        "hyperparameters": json.dumps(summary.get("model", {}).get("hyperparameters", {})),
        "input_norm": run.config.input_norm,
        "weights": "moving average" if averaged else "raw",
        "step": str(step),
        "run": str(run_dir),
    }
    from safetensors.numpy import save

    write_atomically(out, lambda f: f.write(save(tensors, metadata)), binary=True)
    return metadata


def variable_shapes(model_name: str, **hyperparameters) -> dict:
    """The model's {"params", "batch_stats"} as shapes, traced, not computed;
    `hyperparameters` as metrics.json (and the export's metadata) records them."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in hyperparameters.items()}
    model = models.get_model(model_name, **fields)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def load_torch_weights(path, model_name: str, **hyperparameters) -> dict:
    """A PyTorch state dict of mnist_jax.torch_models' class for `model_name`
    (a .safetensors file, or a .pth from torch.save) as our variables
    {"params", "batch_stats"} (numpy), exactly. The keys and shapes must be
    the class's: WeightsError names the first that is not."""
    if sentence := refusal(model_name):
        raise WeightsError(sentence)
    state_dict = load_state_dict(path)
    try:
        return torch_layout.from_state_dict(
            model_name, state_dict, variable_shapes(model_name, **hyperparameters)
        )
    except torch_layout.LayoutError as e:
        raise WeightsError(f"{path}: {e}") from e


def inference_state(model, variables: dict) -> TrainState:
    """A TrainState holding `variables` for `model`, with no optimizer:
    what steps.infer and steps.evaluate take (for fine-tuning, build one
    with steps.create_train_state and steps.load_pretrained instead)."""
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=optax.identity(),
        key=jax.random.PRNGKey(0),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_jax.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", type=pathlib.Path, required=True, metavar="RUN_DIR", help="a finished run"
    )
    parser.add_argument("out", type=pathlib.Path, metavar="OUT", help="the .safetensors to write")
    parser.add_argument("--raw", action="store_true", help="the raw weights, not their average")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    try:
        metadata = export_run(args.checkpoint, args.out, raw=args.raw, force=args.force)
    except (ExportError, rundir.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: the {metadata['weights']} weights of {metadata['model']} at step "
        f"{metadata['step']}, for {metadata['torch_class']} (inputs: input_norm "
        f"{metadata['input_norm']!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
