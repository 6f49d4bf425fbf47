"""Sliding-window inference: window placement, exact tiling, padding, and agreement with MONAI's."""

from __future__ import annotations

import pytest
import torch

from medseg.infer.sliding import gaussian_weights, predict_logits, sliding_window, window_starts


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (10, 10, 0.5, [0]),
        (6, 10, 0.5, [0]),
        (20, 8, 0.5, [0, 4, 8, 12]),
        (21, 8, 0.5, [0, 3, 6, 10, 13]),  # evenly spread, last window ends at the border
        (9, 8, 0.0, [0, 1]),
    ],
)
def test_window_starts(size, patch, overlap, expected):
    starts = window_starts(size, patch, overlap)
    assert starts == expected
    assert starts[-1] + min(patch, size) >= size
    steps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(step <= patch * (1 - overlap) + 0.5 for step in steps)


def test_gaussian_weights_peak_in_the_centre():
    weights = gaussian_weights((9, 12))
    assert weights.shape == (9, 12)
    assert weights.max() == 1 and weights[4, 5] == weights[4, 6] > weights[0, 0] > 0
    torch.testing.assert_close(weights, weights.flip(0).flip(1))


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A predictor whose output at a voxel depends only on that voxel: any weighted tiling must reproduce it."""
    return torch.cat([2 * x, x * x - 1], dim=1)


@pytest.mark.parametrize(
    ("shape", "patch"),
    [((1, 1, 37, 50), (16, 24)), ((1, 2, 7, 30, 11), (8, 16, 8)), ((1, 1, 12, 12), (16, 16))],
)
def test_tiles_cover_the_image_exactly_with_padding(shape, patch):
    x = torch.randn(shape)
    out = sliding_window(x, patch, pointwise, overlap=0.5, batch_size=3)
    torch.testing.assert_close(out, pointwise(x))


def test_predictor_sees_full_patches_only():
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x

    sliding_window(torch.randn(1, 1, 20, 9), (8, 8), record, overlap=0.5, batch_size=2)
    assert seen and all(s[2:] == (8, 8) and s[0] <= 2 for s in seen)
    assert sum(s[0] for s in seen) == 4 * 2  # 4 windows along 20, 2 along 9


def test_agrees_with_monai_sliding_window():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 3, padding=1))
    x = torch.randn(1, 1, 70, 45)
    with torch.no_grad():
        ours = sliding_window(x, (32, 32), net, overlap=0.5)
        theirs = sliding_window_inference(x, (32, 32), 2, net, overlap=0.5, mode="gaussian")
        whole = net(x)
    # the windows sit at other places, so values differ a little near window borders (zero padding there)
    assert (ours - theirs).abs().mean() < 0.02 * whole.abs().mean()
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() > 0.99
    assert (ours - whole).abs().mean() <= (theirs - whole).abs().mean() * 1.5


def test_predict_logits_mirror_tta_of_a_mirror_symmetric_predictor_changes_nothing():
    x = torch.randn(2, 24, 20)

    class Pointwise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return pointwise(batch)

    plain = predict_logits(Pointwise(), x, (16, 16))
    mirrored = predict_logits(Pointwise(), x, (16, 16), mirror_axes=(0, 1))
    torch.testing.assert_close(plain, pointwise(x[None])[0])
    torch.testing.assert_close(mirrored, plain)
