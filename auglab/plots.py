"""Figures: the one writer every PNG goes through, and the figures the GAN stages draw.

`save_figure` owns how a PNG reaches the disk: atomically (a temp file beside it, then a
rename) and without matplotlib's version stamp, so the same figure gives the same bytes and
DVC outputs stay byte-identical across runs. The figures of the other modules (augment's
sample grid, evaluate's gallery, tune's history) are drawn there and written here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from auglab.files import name_output, temp_path

GRID_COLUMNS = 12  # samples per class in a class grid


def save_figure(figure: Figure, path: Path, dpi: int) -> None:
    """A matplotlib figure as PNG at `path`, written atomically and without matplotlib's version
    stamp: the same figure gives the same bytes."""
    temp = temp_path(path)
    try:
        figure.savefig(temp, format="png", dpi=dpi, metadata={"Software": None})
        temp.replace(path)
    except BaseException as e:
        Path(temp).unlink(missing_ok=True)
        name_output(e, temp, path)
        raise


def loss_curves(path: Path, history: list[dict], title: str) -> None:
    """PNG: a GAN's discriminator and generator losses, and the mean D scores of real and fake
    images, per logged step (auglab.gan.train's history rows)."""
    steps = [row["step"] for row in history]
    figure = Figure(figsize=(8, 3))
    left, right = figure.subplots(1, 2)
    for key, label in (("d_loss", "discriminator"), ("g_loss", "generator")):
        left.plot(steps, [row[key] for row in history], label=label)
    for key, label in (("d_real", "D(real)"), ("d_fake", "D(fake)")):
        right.plot(steps, [row[key] for row in history], label=label)
    for axis, name in ((left, "loss"), (right, "mean discriminator score")):
        axis.set_xlabel("step")
        axis.set_ylabel(name)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def class_grid(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], title: str) -> None:
    """PNG: one row per class, the first GRID_COLUMNS of its uint8 (N, H, W) images."""
    classes = len(class_names)
    figure = Figure(figsize=(GRID_COLUMNS * 0.6 + 1.2, classes * 0.62))
    axes = figure.subplots(classes, GRID_COLUMNS, squeeze=False)
    for c in range(classes):
        rows = np.flatnonzero(labels == c)[:GRID_COLUMNS]
        for j in range(GRID_COLUMNS):
            axes[c, j].set_axis_off()
            if j < len(rows):
                axes[c, j].imshow(images[rows[j]], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[c, 0].set_title(class_names[c], fontsize=6, loc="left")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
