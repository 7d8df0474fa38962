"""The registry of experiments: `python -m experiments.<name>` runs one.

`python -m experiments` lists them. Each module holds its config, the
report's reference numbers and a `main()`; its docstring gives the command
and the result it should reach.
"""

# name -> what it reproduces (kept import-free so listing is instant).
EXPERIMENTS = {
    "cnn": "3-conv CNN of report 004 (Lab 2): 99.38 % test accuracy, F1 0.9938, 88.29 s",
    "simple_cnn": "simple CNN of report 000: 99.10 % test accuracy, test loss 0.0264",
    "deep_cnn": "deep CNN ('Faster R-CNN adapted') of report 004: 99.40 %, F1 0.9940, 101.16 s",
    "vit": "Vision Transformer from scratch of report 004: 97.97 %, F1 0.9797, 189.49 s",
    "vgg16": "VGG16 transfer learning of report 004: 99.08 %, F1 0.9908, 996.34 s",
    "alexnet": "AlexNet transfer learning of report 004: 99.26 %, F1 0.9926, 333.10 s",
    "linear_ae": "linear autoencoder 784-128-784 of report 001: test MSE, reconstructions",
    "conv_ae": "convolutional autoencoder (latent 12) of report 003: test MSE and PSNR, reconstructions",
    "noisy": "report 000's noisy chain: CNN on noise, denoising AE, CNN on denoised data; robustness curve",
    "transfer": "report 003's encoder classifiers with 100-3,000 labels: scratch vs frozen vs fine-tuned vs decoding",
    "sweep": "report 000's hyperparameter sweep of the simple CNN: trials trained together, best by validation",
    "eda": "report 000's data exploration: labels per split, 5 samples per label, pixel statistics",
    "feature_maps": "report 000's feature maps of a trained model for one image; the ViT's attention maps",
    "compare": "report 004's comparison of every classifier: accuracy, F1, time, parameters, over seeds",
    "benchmark": "training throughput (examples/s) of the CNN step; --vs-torch: every model against plain PyTorch",
    "speedrun": "the shortest wall time to 99 % test accuracy, every one of 3 seeds (a small CNN, one epoch)",
}
