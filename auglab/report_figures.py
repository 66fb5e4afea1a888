"""The report's figures: loss curves, confusion matrices, first-layer filters and S1's sweep
plots, each drawn from loaded numbers (or a model) into one PNG through auglab.plots.save_figure.
auglab/report.py decides which are drawn and links them from the Markdown.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from auglab import preprocess
from auglab.plots import save_figure


def save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def read_tsv(path: Path) -> tuple[list[int], list[float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    value = next(key for key in rows[0] if key not in ("step", "timestamp"))
    return [int(r["step"]) + 1 for r in rows], [float(r[value]) for r in rows]


def curves(path: Path, live: dict[str, Path], title: str) -> None:
    """Train (dashed) and val (solid) loss per epoch of each labelled DVCLive directory."""
    figure = Figure(figsize=(7, 3.5))
    axis = figure.subplots()
    for index, (label, folder) in enumerate(live.items()):
        color = f"C{index}"
        for split, style in (("train", "--"), ("val", "-")):
            epochs, values = read_tsv(folder / "plots/metrics" / split / "loss.tsv")
            axis.plot(epochs, values, style, color=color, label=f"{label} ({split})")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    save(figure, path)


def minutes_and_val(live: Path) -> tuple[np.ndarray, np.ndarray]:
    """(training minutes at the end of each epoch val was scored after, val accuracy then) of one
    DVCLive directory: the summary's train_seconds shared out over the epochs by their logged speed
    (1 / img/s each); a run with `val_every` > 1 has val rows for some epochs only."""
    _, speed = read_tsv(live / "plots/metrics/img_per_s.tsv")
    epochs, accuracy = read_tsv(live / "plots/metrics/val/acc.tsv")
    seconds = json.loads((live / "metrics.json").read_text())["train_seconds"]
    share = np.cumsum(1 / np.array(speed)) / np.sum(1 / np.array(speed))
    return share[np.array(epochs) - 1] * seconds / 60, np.array(accuracy)


def cost_curves(path: Path, live: dict[str, Path], title: str) -> None:
    """Val accuracy against minutes of training, one line per labelled DVCLive directory."""
    figure = Figure(figsize=(7, 3.5))
    axis = figure.subplots()
    curves = {label: minutes_and_val(folder) for label, folder in live.items()}
    for label, (minutes, accuracy) in curves.items():
        axis.plot(minutes, accuracy, ".-", label=label)
    top = max(accuracy.max() for _, accuracy in curves.values())
    axis.set_ylim(top - 0.02, min(1.0, top + 0.003))  # the last points, where members differ
    axis.set_xlabel("minutes of training (this machine)")
    axis.set_ylabel("val accuracy")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    save(figure, path)


def confusion(path: Path, rows_csv: Path, class_names: list[str], title: str) -> np.ndarray:
    """Heat map of a confusion rows CSV (actual,predicted class names); returns the matrix."""
    index = {name: i for i, name in enumerate(class_names)}
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    with open(rows_csv) as f:
        for row in csv.DictReader(f):
            matrix[index[row["actual"]], index[row["predicted"]]] += 1
    figure = Figure(figsize=(5, 4.5))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center", fontsize=6,
                  color="white" if count > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=6)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=6)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title(title, fontsize=9)
    save(figure, path)
    return matrix


@torch.no_grad()
def filters_and_maps(path: Path, model: nn.Module, image: np.ndarray, mean: float, std: float, title: str) -> int:
    """The first convolution's filters (top) and its feature maps of one image (bottom);
    returns the number of filters drawn."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    weights = conv.weight.detach().float().cpu()[:, 0]
    x = preprocess.to_input(torch.from_numpy(image)[None, None], mean, std, model.image_size)
    maps = conv(x.to(conv.weight.device, conv.weight.dtype)).float().cpu()[0]
    count = min(16, len(weights))
    figure = Figure(figsize=(count * 0.7, 2.0))
    axes = figure.subplots(2, count, squeeze=False)
    for k in range(count):
        axes[0, k].imshow(weights[k], cmap="gray")
        axes[1, k].imshow(maps[k], cmap="viridis")
        axes[0, k].set_axis_off()
        axes[1, k].set_axis_off()
    figure.suptitle(title, fontsize=8)
    save(figure, path)
    return count


def grid_heatmap(path: Path, cells: dict[tuple[str, str], dict], activations: list[str], optimizers: list[str],
                 best: tuple[str, str], title: str) -> None:
    """Test accuracy per (activation, optimizer), the `best` pair (chosen on val) outlined."""
    values = np.array([[cells[a, o]["test_accuracy"] for o in optimizers] for a in activations])
    figure = Figure(figsize=(1.0 + 0.9 * len(optimizers), 1.2 + 0.5 * len(activations)))
    axis = figure.subplots()
    image = axis.imshow(values, cmap="viridis")
    for (i, j), value in np.ndenumerate(values):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                  color="black" if value > values.min() + 0.6 * (values.max() - values.min()) else "white")
    row, column = activations.index(best[0]), optimizers.index(best[1])
    axis.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axis.set_xticks(range(len(optimizers)), optimizers, rotation=45, fontsize=7)
    axis.set_yticks(range(len(activations)), activations, fontsize=7)
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.04)
    save(figure, path)


def batch_plot(path: Path, cells: dict[int, dict], title: str) -> None:
    """Seconds per epoch (bars, left axis) and val accuracy (line, right axis) per batch size."""
    sizes = sorted(cells)
    figure = Figure(figsize=(6, 3.2))
    axis = figure.subplots()
    positions = range(len(sizes))
    axis.bar(positions, [cells[s]["seconds_per_epoch"] for s in sizes], color="C0", alpha=0.6)
    axis.set_xticks(positions, [str(s) for s in sizes])
    axis.set_xlabel("batch size")
    axis.set_ylabel("seconds per epoch", color="C0")
    other = axis.twinx()
    other.plot(positions, [cells[s]["val_accuracy"] for s in sizes], "o-", color="C3")
    other.set_ylabel("val accuracy", color="C3")
    axis.set_title(title, fontsize=9)
    save(figure, path)
