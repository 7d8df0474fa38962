"""AlexNet transfer learning, report 004: frozen ImageNet features, new classifier.

    python -m experiments.alexnet                        # 224x224, torchvision's weights, 5 epochs
    python -m experiments.alexnet --image-size 63       # the smallest AlexNet takes
    python -m experiments.alexnet --weights alexnet-owt-7be5be79.pth  # a file you downloaded
    python -m experiments.alexnet --weights none         # random init, labelled so everywhere
    python -m experiments.alexnet --quick                # 63x63, 900 images, random init

Adam 1e-4 on the classifier only, batch 64, grayscale repeated to RGB,
ImageNet normalisation. Features are computed once and cached (exact: the
frozen layers are deterministic); both wall times are printed.
Report: 99.26 % test accuracy, F1 0.9926, 333.10 s on a GPU at 224x224.
"""

from experiments import _vgg_alexnet
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="alexnet",
    input_norm="unit",
    epochs=5,
    batch_size=64,
    learning_rate=1e-4,
    weight_decay=0.0,
    trainable=("classifier",),
    checkpoint_every_steps=10_000,
    keep_checkpoints=1,
)

QUICK = TrainConfig(
    model="alexnet",
    input_norm="unit",
    epochs=1,
    learning_rate=1e-4,
    weight_decay=0.0,
    trainable=("classifier",),
    train_size=1000,
    test_size=300,
    log_every_steps=5,
    checkpoint_every_steps=10,
    keep_checkpoints=1,
)

REFERENCE = Reference(
    source="004 Lab 2, PyTorch", accuracy=0.9926, f1_macro=0.9926, train_seconds=333.10
)


def main(argv=None) -> dict:
    return _vgg_alexnet.main(
        "alexnet",
        "alexnet",
        "AlexNet transfer learning on MNIST (report 004).",
        CONFIG,
        QUICK,
        REFERENCE,
        quick_image_size=63,
        argv=argv,
    )


if __name__ == "__main__":
    main()
