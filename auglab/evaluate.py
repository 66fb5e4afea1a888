"""Score a trained model on a split: predictions, the metrics reviewers diff, the confusion rows
DVC's `confusion` template draws, a gallery of misclassified images, and Kaggle's submission.csv.

Metrics are computed from the confusion matrix with NumPy, as scikit-learn defines them (macro
precision, recall and F1 over every class of the dataset, 0 for a class never predicted or never
present), without importing scikit-learn's 1.5 s of modules into every stage process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from auglab import AuglabError, preprocess
from auglab.files import temp_path
from auglab.runtime import as_scoring_input, autocast_dtype, eval_batch, for_scoring
from auglab.train import objective


@dataclass
class Predictions:
    """A model's output on a split: (N, C) class scores, (N,) predicted classes."""

    scores: np.ndarray
    predicted: np.ndarray
    loss: float | None  # mean loss of the model's own objective; None for an unlabelled split


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, labels: np.ndarray | None, mean: float, std: float,
            precision: str = "auto") -> Predictions:
    """Run `model` (eval mode) over uint8 images in batches on its device, under the autocast
    it was trained with; the loss is the model's training objective (cross-entropy, or
    CapsNet's margin loss)."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    for_scoring(model)
    step = eval_batch(device)
    scores = []  # kept on the device and summed there: one copy to the host at the end
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # as Python's float sum of loss.item()
    for start in range(0, len(images), step):
        batch = torch.from_numpy(images[start : start + step]).unsqueeze(1).to(device)
        x = as_scoring_input(preprocess.to_input(batch, mean, std, model.image_size))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if labels is None:
                out = model(x)
            else:
                y = torch.from_numpy(labels[start : start + step].astype(np.int64)).to(device)
                loss, out = objective(model, x, y, 0.0)
                loss_sum += loss.double() * len(y)
        scores.append(out.float())
    stacked = torch.cat(scores).cpu().numpy()
    return Predictions(stacked, stacked.argmax(1).astype(np.uint8),
                       None if labels is None else loss_sum.item() / len(images))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: row = actual class, column = predicted class."""
    pairs = labels.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def metrics(labels: np.ndarray, predicted: np.ndarray, loss: float, class_names: list[str]) -> dict:
    """accuracy, loss, macro precision/recall/F1 and per-class accuracy (recall), as JSON types."""
    counts = confusion_matrix(labels, predicted, len(class_names))
    hits, actual, found = np.diag(counts).astype(np.float64), counts.sum(1), counts.sum(0)
    precision, recall = ratio(hits, found), ratio(hits, actual)
    f1 = ratio(2 * hits, actual + found)  # 2PR / (P + R), written with counts
    return {
        "accuracy": round(float(hits.sum() / len(labels)), 6),
        "loss": round(float(loss), 6),
        "precision": round(float(precision.mean()), 6),
        "recall": round(float(recall.mean()), 6),
        "f1": round(float(f1.mean()), 6),
        "errors": int((labels != predicted).sum()),
        "per_class_accuracy": {name: round(float(recall[c]), 6) if actual[c] else None
                               for c, name in enumerate(class_names)},
    }


def write_predictions(path: Path, ids: np.ndarray, labels: np.ndarray | None, found: Predictions,
                      class_names: list[str]) -> None:
    """Parquet: id, label (null if unlabelled), predicted, confidence (softmax max) and the
    per-class scores; written to a temp name and renamed."""
    probabilities = torch.softmax(torch.from_numpy(found.scores), 1).numpy()
    columns = {
        "id": pa.array(ids, pa.int64()),
        "label": pa.array(labels if labels is not None else [None] * len(ids), pa.uint8()),
        "predicted": pa.array(found.predicted, pa.uint8()),
        "confidence": pa.array(probabilities.max(1), pa.float32()),
        **{f"score_{name}": pa.array(found.scores[:, c], pa.float32()) for c, name in enumerate(class_names)},
    }
    temp = temp_path(path)
    pq.write_table(pa.table(columns), temp, compression="lz4")
    temp.replace(path)


def confusion_rows(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> bytes:
    """CSV with one row per image, `actual,predicted` class names: what DVC's confusion template
    counts into a matrix."""
    lines = ["actual,predicted"] + [f"{class_names[a]},{class_names[p]}" for a, p in zip(labels, predicted, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def submission(predicted: np.ndarray) -> bytes:
    """Kaggle's digit-recognizer format: `ImageId,Label`, ImageId counting from 1."""
    return ("ImageId,Label\n" + "".join(f"{i + 1},{int(p)}\n" for i, p in enumerate(predicted))).encode()


def check_labels(labels: np.ndarray, classes: int, where: str) -> None:
    if len(labels) and int(labels.max()) >= classes:
        raise AuglabError(f"{where}: label {int(labels.max())} out of range for a {classes}-class model")


def check_model(path: Path, saved: dict, class_names: list[str], height: int, width: int,
                where: Path) -> None:
    """A model is scored only on data like the data it learned: the same classes in the same order,
    and images no larger than its input (smaller ones are padded). Dataset names may differ:
    Kaggle's digits are MNIST's classes."""
    found, expected = [], []
    if len(saved["class_names"]) != len(class_names):
        found.append(f"{len(saved['class_names'])} classes")
        expected.append(f"{len(class_names)} classes")
    elif saved["class_names"] != class_names:
        found.append(f"classes {saved['class_names']}")
        expected.append(f"classes {class_names}")
    if saved["image_size"] < max(height, width):
        found.append(f"{saved['image_size']}x{saved['image_size']} input")
        expected.append(f"an input of at least {height}x{width}")
    if found:
        raise AuglabError(f"{path}: a {saved['dataset']} model with {', '.join(found)}, "
                          f"expected {', '.join(expected)} as in {where}")
