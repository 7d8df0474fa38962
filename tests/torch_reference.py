"""torchvision's VGG16 and AlexNet, written out in plain PyTorch, and the
reports' models (mnist_jax.torch_models).

The same modules, order and indices as torchvision.models (so the same
state-dict keys); torchvision itself is not installed, as its wheels here
are built against another torch.
"""

import torch
from torch import nn

# The reports' own models: their PyTorch definitions are the library's.
from mnist_jax.torch_models import Decoder, DeepCNN, Encoder, LinearAutoencoder

__all__ = ["BUILDERS", "DeepCNN", "Decoder", "Encoder", "LinearAutoencoder", "count"]


def vgg16(num_classes: int = 1000, hidden: int = 4096) -> nn.Module:
    layers, channels = [], 3
    for v in [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return _Net(
        nn.Sequential(*layers),
        7,
        nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        ),
    )


def alexnet(num_classes: int = 1000, hidden: int = 4096) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    return _Net(
        features,
        6,
        nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        ),
    )


class _Net(nn.Module):
    def __init__(self, features, pool, classifier):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


BUILDERS = {"vgg16": vgg16, "alexnet": alexnet}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
