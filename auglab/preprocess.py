"""Normalization statistics (fitted on the train split only) and the load-time input transform.

Pixels stay uint8 on disk; a batch becomes model input on the device, in one step:
(N, H, W) or (N, 1, H, W) uint8 -> zero-pad to `size` -> (x/255 - mean) / std, float32.
Storing statistics instead of float copies keeps shards 4x smaller and lets one set of shards
feed models of any input size (LeNet-5 wants 32x32, the rest 28x28).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def input_stats(stats: dict, normalize: str) -> dict:
    """The statistics a model's inputs are normalized with: the dataset's fitted mean and std
    ("dataset"), or none beyond /255 ("unit": mean 0, std 1, as Keras code scales, e.g. S2's)."""
    if normalize == "dataset":
        return stats
    if normalize == "unit":
        return {**stats, "mean": 0.0, "std": 1.0}
    raise ValueError(f"normalize {normalize!r}: expected dataset or unit")


def fit_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of pixel/255 over all images (N, H, W) uint8, from exact integer sums."""
    values = images.reshape(-1).astype(np.int64)
    count = values.size
    total, squares = int(values.sum()), int((values * values).sum())
    mean = total / count
    variance = (squares * count - total * total) / (count * count)  # exact numerator
    return mean / 255, math.sqrt(variance) / 255


def to_input(batch: torch.Tensor, mean: float, std: float, size: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W) or (N, 1, H, W) -> normalized float32 (N, 1, size, size), zero-padded.

    Padding adds black (0) pixels before normalization, so the border matches the background.
    """
    if batch.dtype != torch.uint8:
        raise TypeError(f"to_input: expected a uint8 batch, got {batch.dtype}")
    if batch.dim() == 3:
        batch = batch.unsqueeze(1)
    height, width = batch.shape[-2:]
    if size is not None and (size, size) != (height, width):
        if size < height or size < width:
            raise ValueError(f"to_input: cannot pad {height}x{width} to the smaller {size}x{size}")
        top, left = (size - height) // 2, (size - width) // 2
        batch = F.pad(batch, (left, size - width - left, top, size - height - top))
    return (batch.float() / 255 - mean) / std
