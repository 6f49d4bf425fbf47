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


@pytest.mark.parametrize("res_block", [False, True])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_is_monai_dynunet_with_native_resolution_heads(res_block, spatial_dims):
    """Same parameter names and outputs as MONAI's DynUNet, so its bundles load and behave the same."""
    from monai.networks.nets import DynUNet

    ours = make("resunet" if res_block else "unet", spatial_dims, deep_supervision=True)
    strides = [(1,) * spatial_dims] + [(2,) * spatial_dims] * (len(FEATURES) - 1)
    theirs = DynUNet(spatial_dims, 2, 3, kernel_size=[3] * len(FEATURES), strides=strides,
                     upsample_kernel_size=strides[1:], filters=list(FEATURES), norm_name=("INSTANCE", {"affine": True}),
                     act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}), deep_supervision=True,
                     deep_supr_num=len(FEATURES) - 2, res_block=res_block)
    state = ours.state_dict()
    assert set(state) == {k for k in theirs.state_dict() if not k.startswith("skip_layers.")}
    theirs.load_state_dict(state, strict=False)  # skip_layers.* are the same tensors under second names
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]  # optimiser order
    x = torch.randn(2, 2, *(32,) * spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-5)
        heads = ours.train()(x)
        full = theirs.train()(x)[:, 0]
    torch.testing.assert_close(heads[0], full, rtol=1e-4, atol=1e-5)
    for ours_head, their_head in zip(heads[1:], theirs.heads, strict=True):  # DynUNet keeps them unscaled here
        torch.testing.assert_close(ours_head, their_head, rtol=1e-4, atol=1e-5)
    assert [h.shape[-1] for h in heads] == [32, 16]


def test_deep_supervision_copy_is_independent():
    model = make("unet", 2, deep_supervision=True).train()
    twin = copy.deepcopy(model)  # e.g. an EMA copy
    x = torch.randn(1, 2, 32, 32)
    assert [o.shape[-1] for o in twin(x)] == [32, 16]
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


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
