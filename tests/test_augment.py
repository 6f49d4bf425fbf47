"""Batched augmentation: shapes/dtypes, determinism and resume, label safety, exact mirror/rotation geometry."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from medseg.augment import AugmentConfig, BatchAugmenter

EVERYTHING = dict(p_rotate=1.0, p_scale=1.0, p_elastic=1.0, p_gamma=1.0, p_gamma_invert=1.0, p_brightness=1.0,
                  p_contrast=1.0, p_noise=1.0, p_blur=1.0, p_lowres=1.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test tensors are tiny: on a small shared CPU, waking intra-op threads costs far more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


INTENSITY_ONLY = dict(p_gamma=1.0, p_gamma_invert=1.0, p_brightness=1.0, p_contrast=1.0, p_noise=1.0, p_blur=1.0,
                      p_lowres=1.0)


def only(**kwargs) -> AugmentConfig:
    """All probabilities 0 and no mirroring, except what is given."""
    return AugmentConfig(**{**asdict(AugmentConfig.none()), **kwargs})


def batch(shape: tuple[int, ...], dtype=torch.int64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image (B, 2, *S) and a blobby label (B, 1, *S) with values {0, 3, 7} (or {-1, 0, 3} for int8)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((shape[0], 2, *shape[1:]), generator=g)
    coarse = torch.randint(0, 3, (shape[0], 1, *[max(2, s // 4) for s in shape[1:]]), generator=g)
    label = torch.nn.functional.interpolate(coarse.float(), size=shape[1:], mode="nearest").long()
    values = torch.tensor([-1, 0, 3] if dtype == torch.int8 else [0, 3, 7])
    return image, values[label].to(dtype)


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "dtype"),
    [(2, (3, 20, 28), torch.int64), (2, (2, 16, 12), torch.uint8), (3, (2, 10, 14, 12), torch.int8),
     (3, (3, 8, 12, 10), torch.int64)],
)
@pytest.mark.parametrize("settings", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_shapes_dtypes_and_label_values_preserved(spatial_dims, shape, dtype, settings):
    image, label = batch(shape, dtype)
    image_in, label_in = image.clone(), label.clone()
    aug = BatchAugmenter(AugmentConfig(**settings), spatial_dims, seed=1)
    for _ in range(3):
        out_image, out_label = aug(image, label)
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert out_label.shape == label.shape and out_label.dtype == label.dtype
        assert torch.isfinite(out_image).all()
        assert set(out_label.unique().tolist()) <= set(label.unique().tolist()) | {0}
    assert torch.equal(image, image_in) and torch.equal(label, label_in), "inputs must not be modified"
    if settings:
        assert not torch.equal(out_image, image) and not torch.equal(out_label, label)


def test_same_seed_same_output_and_state_dict_resumes_exactly():
    image, label = batch((2, 10, 12, 14))
    config = AugmentConfig(**EVERYTHING, p_mirror=0.5)
    a, b = BatchAugmenter(config, 3, seed=7), BatchAugmenter(config, 3, seed=7)
    for _ in range(2):
        (ia, la), (ib, lb) = a(image, label), b(image, label)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    state = a.state_dict()
    expected = a(image, label)
    resumed = BatchAugmenter(config, 3, seed=123)
    assert not torch.equal(resumed(image, label)[0], expected[0])
    resumed.load_state_dict(state)
    got = resumed(image, label)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = BatchAugmenter(config, 3, seed=8)(image, label)
    assert not torch.equal(other[0], expected[0])


def test_identity_config_returns_inputs_unchanged():
    for dims, shape in ((2, (2, 12, 9)), (3, (2, 6, 7, 8))):
        image, label = batch(shape, torch.uint8)
        out_image, out_label = BatchAugmenter(AugmentConfig.none(), dims, seed=0)(image, label)
        assert torch.equal(out_image, image) and torch.equal(out_label, label)


@pytest.mark.parametrize(("dims", "shape", "axis"), [(2, (3, 8, 10), 0), (2, (3, 8, 10), 1), (3, (2, 4, 6, 8), 2)])
def test_mirror_with_p1_equals_flip(dims, shape, axis):
    image, label = batch(shape)
    out_image, out_label = BatchAugmenter(only(mirror_axes=(axis,), p_mirror=1.0), dims, seed=0)(image, label)
    assert torch.equal(out_image, image.flip(axis + 2))
    assert torch.equal(out_label, label.flip(axis + 2))


def test_mirror_is_per_sample():
    image, label = batch((16, 6, 8))
    out_image, _ = BatchAugmenter(only(mirror_axes=(1,), p_mirror=0.5), 2, seed=3)(image, label)
    flipped = [torch.equal(out_image[i], image[i].flip(2)) for i in range(16)]
    kept = [torch.equal(out_image[i], image[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def _rotated_centre_square(x: torch.Tensor, k: int) -> torch.Tensor:
    """rot90 of the central Y x Y square of a (.., Y, X) tensor with X > Y, the rest unchanged."""
    y, xs = x.shape[-2:]
    lo = (xs - y) // 2
    out = x.clone()
    out[..., lo : lo + y] = torch.rot90(x[..., lo : lo + y], k, dims=(-2, -1))
    return out


@pytest.mark.parametrize("angle", [90.0, -90.0])
def test_rotation_by_90_degrees_on_non_square_2d_matches_rot90(angle):
    # An asymmetric blob (an "L" plus a dot) around the centre of a 16 x 24 patch: a rotation in normalised
    # coordinates without the aspect-ratio correction would stretch it by 1.5 along one axis.
    label = torch.zeros(2, 1, 16, 24, dtype=torch.uint8)
    label[:, :, 4:12, 9:12] = 1
    label[:, :, 9:12, 12:17] = 2
    label[:, :, 5, 15] = 3
    image = label.float() * 10 - 3
    config = only(p_rotate=1.0, rotate_deg=(angle, angle))
    out_image, out_label = BatchAugmenter(config, 2, seed=0)(image, label)
    k = 1 if angle > 0 else -1
    assert torch.equal(out_label, _rotated_centre_square(label, k))
    assert not torch.equal(out_label, _rotated_centre_square(label, -k))
    # Pixel centres land on pixel centres, so the linear image sampling is exact too, except the padded corners.
    expected = _rotated_centre_square(image, k)
    assert torch.allclose(out_image[..., 4:20], expected[..., 4:20], atol=1e-4)


def test_in_plane_only_3d_rotation_matches_rot90_per_slice_and_keeps_z():
    label = torch.zeros(1, 1, 5, 12, 18, dtype=torch.int64)
    label[:, :, :, 3:9, 7:9] = 4
    label[:, :, :, 7:9, 9:13] = 5
    config = only(p_rotate=1.0, rotate_deg=(90.0, 90.0), rotate_deg_inplane_only=True)
    _, out_label = BatchAugmenter(config, 3, seed=0)(label.float(), label)
    assert torch.equal(out_label, _rotated_centre_square(label, 1))
    # Random in-plane rotations and zooms never mix slices: a Z-constant volume stays Z-constant.
    config = only(p_rotate=1.0, p_scale=1.0, rotate_deg=180.0, rotate_deg_inplane_only=True, scale_inplane_only=True)
    out_image, _ = BatchAugmenter(config, 3, seed=0)(torch.randn(1, 1, 1, 12, 18).expand(3, 1, 5, 12, 18), label
                                                     .expand(3, 1, 5, 12, 18))
    assert torch.allclose(out_image, out_image[:, :, :1].expand_as(out_image))


def test_rotation_by_90_degrees_about_all_axes_on_non_cubic_3d_matches_rot90():
    label = torch.zeros(1, 1, 10, 12, 14, dtype=torch.int64)  # content inside the central 10^3 cube
    label[:, :, 2:7, 4:6, 5:7] = 1
    label[:, :, 5:7, 5:9, 3:5] = 2
    label[:, :, 3, 4, 8] = 3
    _, out = BatchAugmenter(only(p_rotate=1.0, rotate_deg=(90.0, 90.0)), 3, seed=0)(label.float(), label)
    cube = label[:, :, :, 1:11, 2:12]
    # content rotation R0 @ R1 @ R2: about axis 2 (Z-Y plane) first, then axis 1 (Z-X), then axis 0 (Y-X)
    cube = torch.rot90(torch.rot90(torch.rot90(cube, 1, (2, 3)), 1, (2, 4)), 1, (3, 4))
    expected = torch.zeros_like(label)
    expected[:, :, :, 1:11, 2:12] = cube
    assert torch.equal(out, expected)


def test_scaling_enlarges_content():
    label = torch.zeros(1, 1, 32, 40, dtype=torch.int64)
    label[:, :, 12:20, 16:24] = 1  # 8 x 8 square at the centre
    _, out = BatchAugmenter(only(p_scale=1.0, scale_range=(2.0, 2.0)), 2, seed=0)(label.float(), label)
    assert int(out.sum()) == 16 * 16


def test_label_pad_value_fills_outside():
    label = torch.ones(1, 1, 10, 14, dtype=torch.int64)
    config = only(p_scale=1.0, scale_range=(0.5, 0.5), label_pad_value=9)
    _, out = BatchAugmenter(config, 2, seed=0)(label.float(), label)
    assert set(out.unique().tolist()) == {1, 9}
    assert int(out[0, 0, 0, 0]) == 9 and int(out[0, 0, 5, 7]) == 1


def test_intensity_transforms_change_image_never_label():
    for dims, shape in ((2, (3, 16, 12)), (3, (2, 8, 10, 6))):
        image, label = batch(shape, torch.uint8)
        for name, p in INTENSITY_ONLY.items():
            out_image, out_label = BatchAugmenter(only(**{name: p}), dims, seed=0)(image, label)
            assert not torch.equal(out_image, image), name
            assert torch.equal(out_label, label), name


def test_contrast_stays_within_range_and_gamma_keeps_stats():
    image, label = batch((2, 12, 12))
    out, _ = BatchAugmenter(only(p_contrast=1.0, contrast_range=(1.5, 1.5)), 2, seed=0)(image, label)
    assert (out.amin((2, 3)) >= image.amin((2, 3)) - 1e-6).all() and (out.amax((2, 3)) <= image.amax((2, 3))).all()
    out, _ = BatchAugmenter(only(p_gamma=1.0, gamma_range=(1.5, 1.5)), 2, seed=0)(image, label)
    assert torch.allclose(out.mean((2, 3)), image.mean((2, 3)), atol=1e-4)
    assert torch.allclose(out.std((2, 3)), image.std((2, 3)), atol=1e-4)


def test_works_under_no_grad_and_with_per_channel_parameters():
    image, label = batch((2, 8, 8, 8))
    with torch.no_grad():
        out, _ = BatchAugmenter(AugmentConfig(**INTENSITY_ONLY, intensity_per_channel=True), 3, seed=0)(image, label)
    assert out.shape == image.shape and not out.requires_grad


def test_config_lives_with_the_plan_and_is_re_exported():
    """The plan carries the config, so it is defined in the plan package; ``medseg.augment`` re-exports it."""
    from medseg.plan import AugmentConfig as from_plan

    assert AugmentConfig is from_plan
    assert AugmentConfig.__module__ == "medseg.plan.augment_config"


def test_config_json_round_trip_and_validation():
    config = AugmentConfig(rotate_deg=(-15.0, 15.0), mirror_axes=(1, 2), p_elastic=0.1)
    restored = AugmentConfig.from_dict(json.loads(json.dumps(asdict(config))))
    assert restored == config
    # to_dict is plan.json's form: JSON types already (lists, not tuples), equal to its own JSON round trip
    plain = config.to_dict()
    assert plain == json.loads(json.dumps(plain)) and plain["mirror_axes"] == [1, 2]
    assert AugmentConfig.from_dict(plain) == config and AugmentConfig.from_dict({}) == AugmentConfig()
    with pytest.raises(ValueError):
        AugmentConfig(p_rotate=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(image_padding="nope")
    with pytest.raises(ValueError):
        AugmentConfig.from_dict({"p_rotat": 0.2})
    with pytest.raises(ValueError):
        BatchAugmenter(AugmentConfig(mirror_axes=(2,)), spatial_dims=2)
    with pytest.raises(TypeError):
        BatchAugmenter(AugmentConfig(), 2)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
