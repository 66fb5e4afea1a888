"""Ensembles and flip test-time augmentation (auglab/ensemble.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auglab import AuglabError, ensemble


class Halves(nn.Module):
    """Two 'class scores': the mean of the image's left half and of its right half."""

    image_size = 28

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # predict() finds the device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., :14].mean((1, 2, 3)), x[..., 14:].mean((1, 2, 3))], dim=1)


def test_flips_average_the_mirrored_view():
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, :, :7] = 255  # bright on the left
    labels = np.zeros(4, dtype=np.uint8)
    plain = ensemble.member_scores(Halves(), images, labels, 0.0, 1.0, "fp32", flips=False)
    assert (plain[:, 0] > plain[:, 1]).all()  # the left half wins
    flipped = ensemble.member_scores(Halves(), images, labels, 0.0, 1.0, "fp32", flips=True)
    np.testing.assert_allclose(flipped[:, 0], flipped[:, 1])  # left and right mirrored: a tie
    np.testing.assert_allclose(flipped.sum(1), plain.sum(1))


def test_summary_of_three_members():
    labels = np.array([0, 1, 1, 0])
    a = np.array([[2.0, 0], [0, 1], [1, 0], [1, 0]])  # 3 of 4 right
    b = np.array([[0, 1.0], [0, 1], [0, 2], [1, 0]])  # 3 of 4 right
    c = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]])  # 2 of 4 right
    found = ensemble.summary(["a", "b", "c"], [a, b, c], labels)
    assert found["members"] == {"a": 0.75, "b": 0.75, "c": 0.5}
    assert found["accuracy"] == 1.0  # the mean logits get all four right
    assert found["member_mean"] == pytest.approx(2 / 3) and found["member_std"] == pytest.approx(np.std([0.75, 0.75, 0.5]))
    assert (found["member_min"], found["member_max"], found["images"]) == (0.5, 0.75, 4)
    assert found["gain_over_best_member"] == pytest.approx(0.25)


def test_members_must_agree_on_shape():
    with pytest.raises(AuglabError, match="disagree on the score shape"):
        ensemble.combine([np.zeros((4, 10)), np.zeros((4, 2))])
