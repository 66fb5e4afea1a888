"""The report: one table per study (our test numbers beside the study's own), GAN quality,
augmentation sanity, timing, and the figures behind them. Everything here takes loaded numbers
and paths and returns Markdown or writes PNGs; stages/report.py gathers the inputs.
"""

from __future__ import annotations

import csv
import platform
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from auglab import preprocess
from auglab.files import save_figure
from auglab.params import Study

FULL_COLUMNS = ("accuracy", "loss", "precision", "recall", "f1")


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def study_table(study: Study, scores: dict[str, dict], train: dict[str, dict]) -> str:
    """Rows: label, experiment, our test metrics, the study's number and our difference to it."""
    rows = []
    for label, row in study.rows.items():
        ours = scores[row.experiment]
        gap = "" if row.reported is None else f"{ours['accuracy'] - row.reported:+.4f}"
        rows.append([label, f"`{row.experiment}`", *(number(ours[key]) for key in FULL_COLUMNS),
                     f"{train[row.experiment].get('train_seconds', 0):.0f}",
                     f"{row.reported:g}" if row.reported is not None else "not reported", gap or "-"])
    return table(["row", "experiment", "test acc", "test loss", "precision", "recall", "F1", "train s",
                  "study", "ours - study"], rows)


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


def machine() -> str:
    threads = torch.get_num_threads()
    return (f"{platform.processor() or platform.machine()}, {threads} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
