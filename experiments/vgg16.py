"""VGG16 transfer learning, report 004: frozen ImageNet features, new classifier.

    python -m experiments.vgg16                          # 224x224, torchvision's weights, 5 epochs
    python -m experiments.vgg16 --image-size 64          # 12x fewer FLOPs: fits a CPU
    python -m experiments.vgg16 --weights vgg16-397923af.pth   # a file you downloaded
    python -m experiments.vgg16 --weights none           # random init, labelled so everywhere
    python -m experiments.vgg16 --quick                  # 32x32, 270 images, random init

Adam 1e-4 on the classifier only, batch 64, grayscale repeated to RGB,
ImageNet normalisation. Features are computed once and cached (exact: the
frozen layers are deterministic); both wall times are printed.
Report: 99.08 % test accuracy, F1 0.9908, 996.34 s on a GPU at 224x224.
"""

from experiments import _vgg_alexnet
from mnist_jax.config import TrainConfig
from mnist_jax.reference import Reference

CONFIG = TrainConfig(
    model="vgg16",
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
    model="vgg16",
    input_norm="unit",
    epochs=1,
    learning_rate=1e-4,
    weight_decay=0.0,
    trainable=("classifier",),
    train_size=300,
    test_size=100,
    log_every_steps=5,
    checkpoint_every_steps=10,
    keep_checkpoints=1,
)

REFERENCE = Reference(
    source="004 Lab 2, PyTorch", accuracy=0.9908, f1_macro=0.9908, train_seconds=996.34
)


def main(argv=None) -> dict:
    return _vgg_alexnet.main(
        "vgg16",
        "vgg16",
        "VGG16 transfer learning on MNIST (report 004).",
        CONFIG,
        QUICK,
        REFERENCE,
        quick_image_size=32,
        argv=argv,
    )


if __name__ == "__main__":
    main()
