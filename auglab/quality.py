"""How good a GAN's samples are, measured against real images: FID in the feature space of one of
our own classifiers (its penultimate layer), and the class-balanced subsets of samples that CAS
(classification accuracy score: a classifier trained on samples, tested on real images) trains on.
The gan_score stage runs both; auglab.gan makes the samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auglab import AuglabError, preprocess
from auglab.runtime import as_scoring_input, eval_batch, for_scoring


@torch.no_grad()
def penultimate(model: nn.Module, images: np.ndarray, mean: float, std: float, size: int) -> np.ndarray:
    """(N, D) float64 inputs of the model's last Linear layer (its penultimate features) for uint8
    images, computed in fp32 eval mode: FID's feature extractor, trained by a train@ experiment."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, args, output: captured.append(args[0].float()))
    device = next(model.parameters()).device
    try:
        for_scoring(model)
        step = eval_batch(device)
        for start in range(0, len(images), step):
            batch = torch.from_numpy(images[start : start + step]).unsqueeze(1).to(device)
            model(as_scoring_input(preprocess.to_input(batch, mean, std, size)))
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1).double().cpu().numpy()


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, D): |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2).

    The trace of the cross term is taken through symmetric eigendecompositions, which stay real
    and stable where a general matrix square root of Sa Sb picks up imaginary noise.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def matching_rows(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The first counts[c] rows of each class c, in row order: a GAN subset with the class counts
    of a real split, for CAS against that split."""
    picked = [np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)]
    short = [c for c, (rows, n) in enumerate(zip(picked, counts, strict=True)) if len(rows) < n]
    if short:
        raise AuglabError(f"gan samples: class {short[0]} has {len(picked[short[0]])} images, "
                          f"expected at least {counts[short[0]]} to match the real split")
    return np.sort(np.concatenate(picked))
