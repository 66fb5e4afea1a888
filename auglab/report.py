"""The report: one table per study (our test numbers beside the study's own), GAN quality,
augmentation sanity, timing, and the figures behind them. Everything here takes loaded numbers
and paths and returns Markdown or writes PNGs; stages/report.py gathers the inputs.
"""

from __future__ import annotations

import csv
import math
import platform
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from auglab import preprocess, train
from auglab.files import save_figure
from auglab.params import Study

FULL_COLUMNS = ("accuracy", "loss", "precision", "recall", "f1")


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ours: float, reported: float | None, images: int) -> str:
    """*reproduced* when our test accuracy lies inside the 95 % binomial interval of the study's
    number on a test set of `images` (normal approximation), else *better* or *below*."""
    if reported is None:
        return "-"
    half_width = 1.96 * math.sqrt(reported * (1 - reported) / images)
    if abs(ours - reported) <= half_width:
        return "reproduced"
    return "better" if ours > reported else "below"


def study_table(study: Study, scores: dict[str, dict], train: dict[str, dict]) -> str:
    """Rows: label, experiment, our test metrics, the study's number, our difference to it and
    the verdict (with the row's reason when it is below)."""
    rows = []
    for label, row in study.rows.items():
        ours = scores[row.experiment]
        gap = "" if row.reported is None else f"{ours['accuracy'] - row.reported:+.4f}"
        judged = verdict(ours["accuracy"], row.reported, ours["images"])
        if judged == "below" and row.why:
            judged = f"below: {row.why}"
        rows.append([label, f"`{row.experiment}`", *(number(ours[key]) for key in FULL_COLUMNS),
                     f"{train[row.experiment].get('train_seconds', 0):.0f}",
                     f"{row.reported:g}" if row.reported is not None else "not reported", gap or "-", judged])
    return table(["row", "experiment", "test acc", "test loss", "precision", "recall", "F1", "train s",
                  "study", "ours - study", "verdict"], rows)


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
    """The host in one line, with the CPU's vector capability: `precision: auto` trains in bf16
    only where the CPU has native bf16 (AVX-512 bf16), else in fp32, which moves the numbers."""
    threads = torch.get_num_threads()
    native = train.autocast_dtype(torch.device("cpu"), "auto") is torch.bfloat16  # the one place that decides
    bf16 = "native bf16" if native else "no native bf16, so auto = fp32"
    return (f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{threads} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


# --- S1's sweeps and the Optuna search --------------------------------------------------------


def best_cell(cells: dict[tuple[str, str], dict]) -> tuple[str, str]:
    """The (activation, optimizer) pair with the highest val accuracy (lower val loss breaks ties):
    chosen on val, so its test accuracy is an honest estimate."""
    return max(cells, key=lambda pair: (cells[pair]["val_accuracy"], -cells[pair]["val_loss"]))


def grid_table(cells: dict[tuple[str, str], dict], activations: list[str], optimizers: list[str]) -> str:
    """S1's shape: one row per activation, one column per optimizer, `test acc / val loss`; the best
    pair on val in bold."""
    best = best_cell(cells)
    rows = []
    for activation in activations:
        row = [activation]
        for optimizer in optimizers:
            cell = cells[activation, optimizer]
            text = f"{cell['test_accuracy']:.4f} / {cell['val_loss']:.3f}"
            row.append(f"**{text}**" if (activation, optimizer) == best else text)
        rows.append(row)
    return table(["activation \\ optimizer", *optimizers], rows)


def grid_heatmap(path: Path, cells: dict[tuple[str, str], dict], activations: list[str], optimizers: list[str],
                 title: str) -> None:
    """Test accuracy per (activation, optimizer), the best pair on val outlined."""
    values = np.array([[cells[a, o]["test_accuracy"] for o in optimizers] for a in activations])
    figure = Figure(figsize=(1.0 + 0.9 * len(optimizers), 1.2 + 0.5 * len(activations)))
    axis = figure.subplots()
    image = axis.imshow(values, cmap="viridis")
    for (i, j), value in np.ndenumerate(values):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                  color="black" if value > values.min() + 0.6 * (values.max() - values.min()) else "white")
    best = best_cell(cells)
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
