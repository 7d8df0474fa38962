"""torchvision's VGG16 and AlexNet, written out in plain PyTorch.

The same modules, order and indices as torchvision.models (so the same
state-dict keys); torchvision itself is not installed, as its wheels here
are built against another torch.
"""

import torch
from torch import nn


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


# Report 003's encoder and decoder, verbatim.
class Encoder(nn.Module):
    def __init__(self, latent_dim=12):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, stride=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 3 * 3, latent_dim)


class Decoder(nn.Module):
    def __init__(self, latent_dim=12):
        super().__init__()
        self.fc = nn.Linear(latent_dim, 64 * 3 * 3)
        self.deconv1 = nn.ConvTranspose2d(
            64, 32, kernel_size=3, stride=2, padding=1, output_padding=1
        )
        self.deconv2 = nn.ConvTranspose2d(
            32, 16, kernel_size=3, stride=2, padding=1, output_padding=1
        )
        self.deconv3 = nn.ConvTranspose2d(16, 1, kernel_size=5, stride=2, output_padding=1)


def linear_autoencoder() -> nn.Module:  # Report 001.
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())


def deep_cnn() -> nn.Module:  # Report 004's "Deep CNN" as described.
    layers, channels = [], 1
    for width in (64, 128, 256):
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(0.25)]
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(256 * 3 * 3, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    )


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
