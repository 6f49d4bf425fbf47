"""Segmentation losses: finite, differentiable, ordered, deep supervision, bf16 autocast, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError
from medseg.losses import LOSS_NAMES, build_loss, deep_supervision_weights, downsample_labels

C = 3

LABEL_LOSSES = tuple(name for name in LOSS_NAMES if name != "dice_bce")  # softmax losses over label maps


def labels(spatial=(16, 16), batch=2, seed=0) -> torch.Tensor:
    """(B, 1, *spatial) int64 labels with every class present."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, C, (batch, 1, *spatial), generator=g)
    t.view(-1)[:C] = torch.arange(C)
    return t


def confident(target: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Logits +10 on class (label + shift) % C, -10 elsewhere: perfect for shift 0, all wrong otherwise."""
    return F.one_hot((target[:, 0] + shift) % C, C).movedim(-1, 1).float() * 20 - 10


def random_logits(spatial=(16, 16), batch=2) -> torch.Tensor:
    return torch.randn(batch, C, *spatial, generator=torch.Generator().manual_seed(1)).requires_grad_()


def test_loss_names():
    assert LOSS_NAMES[0] == "dice_ce"
    assert set(LOSS_NAMES) == {"dice_ce", "ce", "dice", "focal", "tversky", "dice_bce"}
    with pytest.raises(MedsegError, match="loss 'dice_bce' trains regions"):  # tested in test_regions.py
        build_loss("dice_bce", num_classes=3)


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_finite_scalar_that_backpropagates(name, spatial):
    loss_fn = build_loss(name, num_classes=C)
    logits = random_logits(spatial)
    loss = loss_fn(logits, labels(spatial))
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_perfect_prediction_beats_wrong_and_random(name):
    loss_fn = build_loss(name, num_classes=C)
    target = labels()
    perfect = loss_fn(confident(target), target)
    wrong = loss_fn(confident(target, shift=1), target)
    rand = loss_fn(random_logits().detach(), target)
    assert perfect < rand < wrong
    assert perfect < 1e-3


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_target_with_or_without_channel_axis_and_any_int_dtype(name):
    loss_fn = build_loss(name, num_classes=C)
    logits, target = random_logits().detach(), labels()
    ref = loss_fn(logits, target)
    assert torch.allclose(loss_fn(logits, target[:, 0]), ref)
    assert torch.allclose(loss_fn(logits, target.to(torch.uint8)), ref)


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_deep_supervision_list(name):
    loss_fn = build_loss(name, num_classes=C)
    target = labels((16, 16, 16), batch=1)
    heads = [random_logits((16, 16, 16), batch=1), random_logits((8, 8, 8), batch=1)]
    heads.append(random_logits((4, 4, 4), batch=1))
    loss = loss_fn(heads, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(h.grad is not None and torch.isfinite(h.grad).all() for h in heads)
    # weights 1, 1/2, 1/4 normalised; each head against the nearest-downsampled labels
    w = deep_supervision_weights(3)
    assert w == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    expected = sum(wi * loss_fn(h, downsample_labels(target, h.shape[2:])) for wi, h in zip(w, heads))
    assert torch.allclose(loss, expected)
    # perfect heads give (near) zero
    perfect = [confident(downsample_labels(target, h.shape[2:])) for h in heads]
    assert loss_fn(perfect, target) < 1e-3


def test_custom_deep_supervision_weights():
    target = labels()
    heads = [random_logits().detach(), random_logits((8, 8)).detach()]
    only_full = build_loss("dice_ce", num_classes=C, deep_supervision_weights=(2, 0))
    plain = build_loss("dice_ce", num_classes=C)
    assert torch.allclose(only_full(heads, target), plain(heads[0], target))
    with pytest.raises(MedsegError, match="2 weights"):
        build_loss("ce", num_classes=C, deep_supervision_weights=(1, 0.5, 0.25))(heads, target)
    for bad in [(), (1, -1), (0, 0), (1, float("nan"))]:
        with pytest.raises(MedsegError):
            build_loss("ce", num_classes=C, deep_supervision_weights=bad)


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_bf16_autocast_on_cpu(name):
    loss_fn = build_loss(name, num_classes=C)
    conv = torch.nn.Conv2d(2, C, 1)
    target = labels()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = conv(torch.randn(2, 2, 16, 16))
        low = conv(torch.randn(2, 2, 8, 8))
        assert full.dtype == torch.bfloat16
        loss = loss_fn([full, low], target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    ref = loss_fn([full.detach().float(), low.detach().float()], target)
    assert torch.allclose(loss, ref)


@pytest.mark.parametrize(
    ("have", "size"), [((12, 16, 20), (6, 8, 10)), ((12, 16, 20), (3, 4, 5)), ((12, 16, 20), (5, 8, 10))]
)
def test_downsample_labels_is_nearest_interpolation(have, size):
    target = torch.randint(0, 5, (2, 1, *have), generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(target.float(), size=size, mode="nearest").long()
    assert torch.equal(downsample_labels(target, size), expected)


def test_errors():
    with pytest.raises(MedsegError) as info:
        build_loss("lovasz", num_classes=C)
    assert all(name in str(info.value) for name in LOSS_NAMES)
    with pytest.raises(MedsegError):
        build_loss("dice_ce", num_classes=1)
    loss_fn = build_loss("dice_ce", num_classes=C)
    with pytest.raises(ValueError, match="channels"):
        loss_fn(torch.randn(2, 4, 16, 16), labels())
    with pytest.raises(ValueError, match="spatial size"):
        loss_fn(torch.randn(2, C, 16, 16), labels((8, 8)))
