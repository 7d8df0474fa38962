"""The convolutional autoencoder of report 003 (latent size 12).

    python -m experiments.conv_ae           # MSE, Adam 1e-3, 10 epochs, batch 64
    python -m experiments.conv_ae --quick   # 2 epochs on 4,500 images: a smoke test

Encoder and decoder are the report's layers (its decoder does give 28x28).
Ends with the test MSE and PSNR and writes reconstructions.png. Report 003
publishes no number; our results are in docs/results.md. Its encoder is
what `experiments.few_labels` starts from.
"""

from mnist_jax.cli import run_experiment
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="conv_ae",
    task="reconstruct",
    input_norm="unit",
    epochs=10,
    batch_size=64,
    learning_rate=1e-3,
    weight_decay=0.0,
)

QUICK = TrainConfig(
    model="conv_ae",
    task="reconstruct",
    input_norm="unit",
    epochs=2,
    weight_decay=0.0,
    train_size=5000,
    test_size=1000,
    log_every_steps=10,
    checkpoint_every_steps=20,
)

REFERENCE = Reference(source="003 Convolution Autoencoder (no number published)", device="GPU")


def main(argv=None) -> dict:
    return run_experiment(
        "conv_ae",
        "Report 003's convolutional autoencoder on MNIST.",
        CONFIG,
        QUICK,
        REFERENCE,
        argv=argv,
    )


if __name__ == "__main__":
    main()
