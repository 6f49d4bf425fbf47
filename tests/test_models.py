"""Segmentation networks: every model in 2D and 3D, output shapes, deep supervision, gradients, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from medseg.errors import MedsegError
from medseg.models import MODEL_NAMES, build_model, count_parameters

FEATURES = (4, 8, 16)
SPATIAL = {2: (32, 32), 3: (16, 16, 16)}


def make(name: str, spatial_dims: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"in_channels": 2, "num_classes": 3, "features": FEATURES, **kwargs}
    return build_model(name, spatial_dims=spatial_dims, **kwargs)


def test_model_names():
    assert set(MODEL_NAMES) == {"unet", "resunet", "fcn", "resnet_unet"}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_forward_gives_full_resolution_logits(name, spatial_dims):
    # built with deep supervision: eval() must still give one full-resolution tensor
    model = make(name, spatial_dims, deep_supervision=True).eval()
    assert count_parameters(model) > 0
    assert model.size_divisor == (4,) * spatial_dims
    with torch.no_grad():
        out = model(torch.randn(2, 2, *SPATIAL[spatial_dims]))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, *SPATIAL[spatial_dims])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deep_supervision_and_gradients(name, spatial_dims):
    model = make(name, spatial_dims, features=(4, 8, 16, 16), deep_supervision=True).train()
    spatial = SPATIAL[spatial_dims]
    outs = model(torch.randn(1, 2, *spatial))
    assert isinstance(outs, list)
    # full, 1/2, 1/4 at their own resolution
    assert [tuple(o.shape) for o in outs] == [(1, 3, *(s // 2**i for s in spatial)) for i in range(3)]
    sum(o.square().mean() for o in outs).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_mode_without_deep_supervision_gives_tensor_and_gradients(name):
    model = make(name, 2, norm="batch").train()
    out = model(torch.randn(2, 2, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_anisotropic_strides(name):
    # first axis kept at stage 1: divisor (2, 4, 4); the len(features) form with leading (1, 1, 1) works too
    for strides in ([(1, 2, 2), 2], [(1, 1, 1), (1, 2, 2), (2, 2, 2)]):
        model = make(name, 3, strides=strides, deep_supervision=True)
        assert model.size_divisor == (2, 4, 4)
        outs = model.train()(torch.randn(1, 2, 6, 16, 16))
        assert [tuple(o.shape[2:]) for o in outs] == [(6, 16, 16), (6, 8, 8)]
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 2, 6, 16, 16)).shape == (1, 3, 6, 16, 16)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_autocast_on_cpu(name):
    model = make(name, 3, deep_supervision=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 2, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)
    assert torch.isfinite(out.float()).all()


def test_dynunet_heads_only_in_train_mode_and_not_kept():
    model = make("unet", 2, deep_supervision=True)
    x = torch.randn(1, 2, 32, 32)
    model.train()(x)
    assert all(h.numel() == 0 for h in model.heads)  # references dropped after the call
    model.eval()
    with torch.no_grad():
        model(x)
    assert all(layer.heads is None for layer in model._head_layers)
    model.train()
    assert all(layer.heads is model.heads for layer in model._head_layers)
    twin = copy.deepcopy(model)  # e.g. an EMA copy: its layers must fill its own heads list
    assert all(layer.heads is twin.heads for layer in twin._head_layers)
    assert [o.shape[-1] for o in twin(x)] == [32, 16]


def test_input_not_divisible_is_a_clear_error():
    model = make("unet", 2).eval()
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 2, 30, 32))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(MedsegError) as info:
        build_model("vnet", spatial_dims=3, in_channels=1, num_classes=2, features=FEATURES)
    for name in MODEL_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "layer"},
        {"features": (4, 8)},
        {"features": (4, 0, 8)},
        {"strides": [2]},
        {"strides": [(1, 2), 2]},
        {"spatial_dims": 4},
    ],
)
def test_bad_arguments_raise_medseg_error(kwargs):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "num_classes": 2, "features": FEATURES, **kwargs}
    with pytest.raises(MedsegError):
        build_model("unet", **kwargs)


def test_count_parameters():
    model = make("fcn", 2)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.scores.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) < total
