"""Figures: the one writer every PNG goes through, and the figures the stages draw from what
the package returns (augmentation samples, misclassified images, GAN losses and samples, tune
trials). Training and augmentation code imports none of this, so a figure's look never re-runs
a training stage.

`save_figure` owns how a PNG reaches the disk: atomically (a temp file beside it, then a
rename) and without matplotlib's version stamp, so the same figure gives the same bytes and
DVC outputs stay byte-identical across runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from auglab.files import name_output, temp_path

GRID_COLUMNS = 12  # samples per class in a class grid
GALLERY_IMAGES = 40  # misclassified images in a gallery


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


def sample_grid(path: Path, images: np.ndarray, labels: np.ndarray, rows: list[int],
                views: dict[int, list[np.ndarray]], per_row: int, title: str,
                class_names: list[str] | None = None) -> None:
    """PNG: one row per sampled source row, its uint8 (H, W) original from `images`, then up to
    `per_row` of its augmented `views` (what auglab.augment.Samples collects)."""
    columns = 1 + per_row
    figure = Figure(figsize=(columns * 0.9, len(rows) * 0.95))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        label = int(labels[row])
        pictures = [images[row], *views.get(row, [])]
        for c in range(columns):
            axis = axes[r, c]
            axis.set_axis_off()
            if c < len(pictures):
                axis.imshow(pictures[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        name = class_names[label] if class_names else str(label)
        axes[r, 0].set_title(f"{name} (original)" if r == 0 else name, fontsize=6, loc="left")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def gallery(path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, class_names: list[str],
            title: str, count: int = GALLERY_IMAGES) -> int:
    """PNG of the first `count` misclassified images, each titled `true -> predicted`; returns
    how many it shows (a model with no error gets a figure saying so)."""
    wrong = np.flatnonzero(labels != predicted)[:count]
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    figure = Figure(figsize=(columns * 1.05, rows * 1.2 + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, index in zip(axes.flat, wrong, strict=False):
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axis.set_title(f"{class_names[labels[index]]}\n-> {class_names[predicted[index]]}", fontsize=6)
    if not len(wrong):
        axes[0, 0].text(0, 0.5, "no misclassified images", fontsize=8)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    return len(wrong)


def history_plot(path: Path, rows: list[dict[str, Any]], baseline: float, title: str) -> None:
    """Trial values in order (pruned ones hollow, at their last reported value), the best so far,
    and the experiment's defaults as a dashed line."""
    figure = Figure(figsize=(7, 3.5))
    axis = figure.subplots()
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    axis.scatter([r["trial"] for r in done], [r["value"] for r in done], color="C0", label="completed", zorder=3)
    axis.scatter([r["trial"] for r in pruned], [r["value"] for r in pruned], facecolors="none", edgecolors="C7",
                 label="pruned (last epoch run)", zorder=3)
    running, best_so_far = -math.inf, []
    for r in rows:
        if r["state"] == "complete":
            running = max(running, r["value"])
        best_so_far.append(running if running > -math.inf else math.nan)
    axis.step([r["trial"] for r in rows], best_so_far, where="post", color="C1", label="best so far")
    axis.axhline(baseline, color="C3", linestyle="--", label=f"experiment defaults ({baseline:.4f})")
    axis.set_xlabel("trial")
    axis.set_ylabel("val accuracy")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
