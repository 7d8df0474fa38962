"""Flax linen models of the reports, looked up by name."""

from mnist_jax.models.cnn import CNN

MODELS = {"cnn": CNN}


def get_model(name: str, **kwargs):
    """Builds the model registered under `name` with its hyperparameters."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
