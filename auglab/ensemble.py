"""Ensembles and test-time flips: average the class scores (logits) of several trained models,
and optionally of each model's view of the mirrored image, then score the test split.

The members are plain model.pt files from train@<exp>; nothing here trains. Each member is
also scored alone (with the same flips), so the report can give the single-model mean and its
spread beside the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from auglab import AuglabError
from auglab.evaluate import predict


def member_scores(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean: float, std: float,
                  precision: str, flips: bool) -> np.ndarray:
    """(N, C) float64 logits of one model, averaged with its logits of the mirrored images when
    `flips` (test-time augmentation for datasets whose classes survive a horizontal flip)."""
    scores = predict(model, images, labels, mean, std, precision).scores.astype(np.float64)
    if flips:
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        scores = (scores + predict(model, mirrored, labels, mean, std, precision).scores) / 2
    return scores


def combine(members: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's logits: the members' mean."""
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise AuglabError(f"ensemble members disagree on the score shape: {sorted(shapes)}")
    return np.mean(np.stack(members), axis=0)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())


def summary(names: Sequence[str], members: Sequence[np.ndarray], labels: np.ndarray) -> dict:
    """Ensemble accuracy, each member's accuracy, the members' mean, spread (std), min, max, and
    what averaging bought: the ensemble's gain over its best member."""
    singles = {name: accuracy(scores, labels) for name, scores in zip(names, members, strict=True)}
    values = np.array(list(singles.values()))
    together = accuracy(combine(members), labels)
    return {"accuracy": together, "members": singles,
            "member_mean": float(values.mean()), "member_std": float(values.std()),
            "member_min": float(values.min()), "member_max": float(values.max()),
            "gain_over_best_member": together - float(values.max()), "images": len(labels)}
