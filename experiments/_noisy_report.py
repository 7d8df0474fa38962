"""What the noisy chain leaves: its figures (robustness.png, samples.png,
confusion_matrices.png) and TensorBoard, and its tables, the report's
numbers beside ours."""

from __future__ import annotations

import pathlib

import numpy as np

from experiments._noisy_chain import TEST_SETS
from mnist_jax import summaries, viz

# The classifier trained on each test set's kind of images: report 000's three results.
OWN_MODEL = {"clean": "clean-trained", "noisy": "noisy-trained", "denoised": "denoised-trained"}
# The robustness curve's lines: the accuracies of each of its points.
CURVES = (
    "clean-trained CNN, noisy input",
    "clean-trained CNN, denoised input",
    "noisy-trained CNN, noisy input",
    "denoised-trained CNN, denoised input",
)


def write_figures(workdir: pathlib.Path, results: dict, test_sets: dict) -> None:
    """robustness.png, samples.png, confusion_matrices.png (every model on
    every test set) and TensorBoard: the same figures, and the scores."""
    points = results["robustness"]["points"]
    curve = viz.figure_to_array(
        viz.curves_figure(
            {name: [(p["sigma"], p[name]) for p in points] for name in CURVES},
            xlabel="Gaussian noise sigma ([0, 1] pixels)",
            ylabel="test accuracy (%)",
            title="Robustness to Gaussian noise",
            marks={"training noise": results["noise"]["level"]}
            if results["noise"]["kind"] == "gaussian"
            else None,
        )
    )
    viz.save_png(curve, workdir / "robustness.png")
    samples = viz.figure_to_array(
        viz.image_rows_figure(
            {name: split.images[:10] / 255.0 for name, split in test_sets.items()},
            "test images: clean / "
            f"{results['noise']['kind']} {results['noise']['level']} / denoised",
        )
    )
    viz.save_png(samples, workdir / "samples.png")
    viz.save_png(
        viz.figure_to_array(
            viz.confusion_matrices_figure(
                {
                    f"{name} CNN": {
                        f"{set_name} test": score["confusion_matrix"]
                        for set_name, score in by_set.items()
                    }
                    for name, by_set in results["scores"].items()
                }
            )
        ),
        workdir / "confusion_matrices.png",
    )
    with summaries.MetricWriter(workdir / "tensorboard") as writer:
        for p in points:  # Steps are sigma in hundredths: TensorBoard wants integers.
            writer.scalars(
                round(100 * p["sigma"]),
                {
                    f"robustness/{k.replace(', ', '/').replace(' ', '_')}": v
                    for k, v in p.items()
                    if k != "sigma"
                },
            )
        writer.image("noisy/robustness", 0, curve)
        writer.image("noisy/samples", 0, samples)
        for name, by_set in results["scores"].items():
            for set_name, score in by_set.items():
                writer.image(
                    f"confusion/{name}_cnn/{set_name}_test",
                    0,
                    viz.confusion_matrix_image(
                        np.array(score["confusion_matrix"]), f"{name} CNN, {set_name} test set"
                    ),
                )
                writer.scalars(0, {f"test/{name}_cnn/{set_name}/accuracy": score["accuracy"]})
        for name, quality in results["quality"].items():
            writer.scalars(0, {f"quality/{name}/{k}": v for k, v in quality.items()})


def tables(results: dict, reference: dict) -> str:
    """The report-vs-ours table (`reference`: the report's accuracy and loss
    of each test set), the accuracy of every (model, test set), and the
    denoising quality, as Markdown."""
    scores, ref, own = results["scores"], reference, OWN_MODEL
    lines = [
        "| test set | model | report accuracy | ours | report loss | ours | ours F1 (macro) |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name in TEST_SETS:
        s = scores[own[set_name]][set_name]
        lines.append(
            f"| {set_name} | {own[set_name]} CNN | {100 * ref[set_name]['accuracy']:.2f} % | "
            f"{100 * s['accuracy']:.2f} % | {ref[set_name]['loss']:.4f} | {s['loss']:.4f} | "
            f"{s['f1_macro']:.4f} |"
        )
    lines += [
        "",
        "Test accuracy of every CNN on every test set:",
        "",
        "| model \\ test set | " + " | ".join(TEST_SETS) + " |",
        "|---|" + "---|" * len(TEST_SETS),
    ]
    for name, by_set in scores.items():
        lines.append(
            f"| {name} CNN | "
            + " | ".join(f"{100 * by_set[t]['accuracy']:.2f} %" for t in TEST_SETS)
            + " |"
        )
    lines += [
        "",
        "Test images against the clean ones:",
        "",
        "| images | MSE | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
    ]
    for name, q in results["quality"].items():
        lines.append(f"| {name} | {q['mse']:.5f} | {q['psnr']:.2f} | {q['ssim']:.4f} |")
    lines += [
        "",
        "Robustness (Gaussian sigma; test accuracy):",
        "",
        "| sigma | " + " | ".join(CURVES) + " | denoised PSNR (dB) |",
        "|---|" + "---|" * (len(CURVES) + 1),
    ]
    for p in results["robustness"]["points"]:
        lines.append(
            f"| {p['sigma']:.2f} | "
            + " | ".join(f"{100 * p[c]:.2f} %" for c in CURVES)
            + f" | {p['denoised PSNR']:.2f} |"
        )
    return "\n".join(lines)
