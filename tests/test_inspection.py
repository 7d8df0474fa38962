"""Feature maps, ViT attention and embeddings, on freshly initialised models."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import inspection, models, optim, steps
from mnist_jax.config import TrainConfig
from mnist_jax.tasks import StepConfig
from tests.conftest import synthetic_split
from tests.test_models import MODELS

IMAGES = synthetic_split(7, seed=3).images  # (7, 28, 28, 1) uint8


def state_of(name: str, **kwargs):
    model = models.get_model(name, **{**MODELS[name][0], **kwargs})
    config = TrainConfig(model=name)
    return steps.create_train_state(
        model, optim.make_optimizer(config, 1), 0, jnp.zeros((1, 28, 28, 1))
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_sows_one_embedding_of_the_documented_width(name):
    model = models.get_model(name, **MODELS[name][0])
    x = jnp.zeros((3, 28, 28, 1))

    def sown(x):
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        return state["intermediates"]

    found = [
        v
        for path, v in flax.traverse_util.flatten_dict(jax.eval_shape(sown, x)).items()
        if path[-1] == inspection.EMBEDDING
    ]
    assert len(found) == 1
    (embedding,) = found[0]
    assert embedding.shape[0] == 3 and np.prod(embedding.shape[1:]) == MODELS[name][3]


def test_embeddings_do_not_depend_on_batching():
    state = state_of("cnn")
    whole = inspection.embeddings(state, IMAGES)
    chex.assert_shape(whole, (7, 128))
    chex.assert_tree_all_finite(whole)
    np.testing.assert_allclose(inspection.embeddings(state, IMAGES, batch_size=3), whole, atol=1e-5)
    assert np.ptp(whole, axis=0).max() > 0  # Images differ, so their embeddings do.


@pytest.mark.slow
def test_feature_maps_are_every_convolution_in_call_order():
    cnn = inspection.feature_maps(state_of("cnn"), IMAGES[:2])
    assert list(cnn) == ["ConvBlock_0/Conv_0", "ConvBlock_1/Conv_0", "ConvBlock_2/Conv_0"]
    chex.assert_shape(list(cnn.values()), [(2, 28, 28, 32), (2, 14, 14, 64), (2, 7, 7, 128)])
    # The autoencoder's transposed convolutions count too: 3 down, 3 up.
    autoencoder = inspection.feature_maps(
        state_of("conv_ae"), IMAGES[:1], StepConfig(task="reconstruct", input_norm="unit")
    )
    assert len(autoencoder) == 6 and autoencoder[list(autoencoder)[-1]].shape == (1, 28, 28, 1)


def test_feature_maps_match_the_first_convolution_computed_by_hand():
    state = state_of("simple_cnn")
    maps = inspection.feature_maps(state, IMAGES[:1])
    kernel, bias = state.params["Conv_0"]["kernel"], state.params["Conv_0"]["bias"]
    inputs = inspection.clean_inputs(IMAGES[:1], StepConfig())
    expected = (
        jax.lax.conv_general_dilated(
            inputs, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + bias[None, None, None]
    )
    np.testing.assert_allclose(maps["Conv_0"], expected, atol=1e-5)


@pytest.mark.slow
def test_attention_weights_are_per_layer_and_head_and_rows_sum_to_one():
    state = state_of("vit", dim=16, depth=2, num_heads=2)
    weights = inspection.attention_weights(state, IMAGES[:3])
    chex.assert_shape(weights, (3, 2, 2, 50, 50))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    chex.assert_shape(inspection.cls_attention_maps(weights[0]), (2, 2, 7, 7))
    np.testing.assert_array_equal(
        inspection.cls_attention_maps(weights[0])[1, 0].ravel(), weights[0, 1, 0, 0, 1:]
    )
    with pytest.raises(ValueError, match="the ViT"):
        inspection.attention_weights(state_of("cnn"), IMAGES[:1])


def test_attention_rollout():
    tokens = 5
    uniform = np.full((1, 2, tokens, tokens), 1 / tokens)
    # One layer: half the uniform attention plus half the identity.
    expected = 0.5 / tokens + 0.5 * np.eye(tokens)
    np.testing.assert_allclose(inspection.attention_rollout(uniform), expected)
    # Layers compose by matrix products, rows stay distributions.
    rng = np.random.default_rng(0)
    weights = rng.random((3, 4, tokens, tokens))
    weights /= weights.sum(-1, keepdims=True)
    rollout = inspection.attention_rollout(weights)
    np.testing.assert_allclose(rollout.sum(-1), 1.0)
    layers = [0.5 * w.mean(0) + 0.5 * np.eye(tokens) for w in weights]
    np.testing.assert_allclose(rollout, layers[2] @ layers[1] @ layers[0])
    with pytest.raises(ValueError, match="square grid"):
        inspection.cls_attention_maps(np.ones((1, 1, 6, 6)) / 6)  # 5 patches
