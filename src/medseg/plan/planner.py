"""Turn a fingerprint into a plan sized for the machine at hand.

nnU-Net sizes its networks for a 10 GB GPU; on a CPU that plan runs at about 12 s an iteration on the
hippocampus set. medseg keeps nnU-Net's rules where they are about the data (target spacing with the
anisotropy rule, patch covering the median case, pooling only along fine axes) and changes the ones about
compute: on a CPU 3D widths start at 8 and 2D at 16 (not 32), AdamW replaces SGD (see optimizer_for), the
patch is capped by voxels, the batch is chosen by a
voxel budget, and bf16 autocast is used where the CPU has native bf16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from medseg.errors import MedsegError
from medseg.io.label_codes import LabelCodes, resolve_codes
from medseg.plan.augment_config import AugmentConfig
from medseg.plan.choices import LossName, ModelName, OptimizerName
from medseg.plan.fingerprint import Fingerprint
from medseg.plan.plan import ChannelNorm, Plan
from medseg.runtime import device_type_of, native_bf16

ANISOTROPY_RATIO = 3.0
# Coarsening (CPU only): the median image is brought down towards COARSE_FIT voxels, but every label keeps at
# least MIN_DEPTH_VOXELS of depth (about half its thickness; see Fingerprint.class_depth_mm_median). 2D keeps 4:
# vessels and membranes a few pixels wide are what 2D sets hold. 3D keeps 2, as a low-resolution stage does: at 4,
# a 3.7 mm-deep liver tumour held a 512x512 abdominal CT at 0.93 mm, where a CPU patch saw 21% of the abdomen
# (validation Dice liver 0.62, right kidney 0.01 after 5 minutes, issue 18).
COARSE_FIT = {2: 128 * 128, 3: 64**3}
MIN_DEPTH_VOXELS = {2: 4.0, 3: 2.0}
# Labels whose centres lie on opposite sides of an axis, each at least this far from the middle (as a fraction
# of the extent), are told apart by side: mirroring along that axis would teach the network to confuse them.
SIDED_MARGIN = 0.1
# nnU-Net's use_mask_for_norm rule: where cropping to the content's box keeps under this share of the median image,
# the rest is background (around a skull-stripped brain), and a z-score over it would depend on the brain's size.
MASKED_NORM_BELOW = 0.75
SGD_LR = 0.01
ADAMW_LR = 3e-3
MIN_FEATURE_MAP = 4


@dataclass
class Machine:
    """What planning needs to know of the hardware."""

    kind: str  # "cpu" or "cuda"
    cores: int
    memory_bytes: int
    bf16: bool

    @classmethod
    def detect(cls, device: str = "auto") -> Machine:
        """This machine's ``device`` (``auto``: its GPU when present, else the CPU, as ``--device`` says).

        Imports torch (seconds) only to ask whether a GPU is there; ``cpu`` asks nothing.
        """
        if device_type_of(device) == "cuda":
            import torch

            props = torch.cuda.get_device_properties(0)
            return cls("cuda", os.cpu_count() or 1, int(props.total_memory), native_bf16("cuda"))
        return cls("cpu", os.cpu_count() or 1, physical_memory(), native_bf16("cpu"))


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass(frozen=True)
class Budget:
    """Compute limits a plan must respect, per machine kind and network dimension."""

    max_patch_voxels: int
    batch_voxels: int
    base_features: int
    max_features: int
    max_stages: int


BUDGETS = {
    ("cpu", 3): Budget(max_patch_voxels=64**3, batch_voxels=160_000, base_features=8, max_features=256, max_stages=5),
    # 2D on CPU (`benchmarks/train_budget.py --dataset jsrt_scr --budget 15m`, benchmarks/results.md): a 512x512 patch
    # (batch 2, widths up to 256) took 19 s a step and the budget check refused 15 minutes; a 256x256 patch (batch 4,
    # widths up to 128) took 10-17 s a step, about 3 s a sample instead of 9.
    ("cpu", 2): Budget(max_patch_voxels=256 * 256, batch_voxels=4 * 256 * 256, base_features=16, max_features=128,
                       max_stages=6),
    ("cuda", 3): Budget(max_patch_voxels=128**3, batch_voxels=2 * 128**3, base_features=32, max_features=320,
                        max_stages=6),
    ("cuda", 2): Budget(max_patch_voxels=1024**2, batch_voxels=12 * 512**2, base_features=32, max_features=512,
                        max_stages=8),
}


def max_features_for(kind: str, dim: int) -> int:
    """The widest layer the planner allows on a ``cpu`` or ``cuda`` machine for a ``dim``-D network."""
    return BUDGETS[(kind, dim)].max_features


def target_spacing(fp: Fingerprint) -> list[float]:
    """Median spacing; along a much coarser axis, its 10th percentile (nnU-Net's anisotropy rule)."""
    spacings = np.asarray(fp.spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    shape = np.median(np.asarray(fp.shapes, dtype=np.float64), axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    if others and target[worst] > ANISOTROPY_RATIO * max(target[others]) and \
            shape[worst] * ANISOTROPY_RATIO < min(shape[others]):
        target[worst] = max(np.percentile(spacings[:, worst], 10), *target[others])
    return [float(round(s, 6)) for s in target]


def coarsened_spacing(fp: Fingerprint, spacing: list[float], machine: Machine) -> tuple[list[float], float]:
    """The spacing a CPU plan trains at, so that one patch sees the whole median image; and the factor used.

    nnU-Net trains 2D at native resolution; on a 2-core CPU a 512x512 chest X-ray then costs 10-17 s a step and
    15 minutes buy about 60 steps (`benchmarks/train_budget.py --dataset jsrt_scr --budget 15m`: 61 steps, Dice
    0.195, in benchmarks/results.md). Lungs and heart are 30+ pixels deep at 512x512, so at
    128x128 they are still well resolved while a step costs a sixteenth. Axes finer than ``finest * factor``
    are raised to it (coarse axes of anisotropic data stay as they are) until the median image has at most
    ``COARSE_FIT`` voxels. The factor is capped so the thinnest label (background included: thin membranes
    between thick cells count too) stays ``MIN_DEPTH_VOXELS`` deep, so vessels one or two pixels wide keep their
    native resolution. Unchanged on GPU, for thin structures, or when no depth is known.
    """
    if machine.kind != "cpu" or not fp.class_depth_mm_median:
        return list(spacing), 1.0
    finest = min(spacing)
    extent = np.median(np.asarray(fp.shapes) * np.asarray(fp.spacings), axis=0)  # mm
    cap = min(fp.class_depth_mm_median.values()) / (MIN_DEPTH_VOXELS[len(spacing)] * finest)

    def fits(factor: float) -> bool:
        return np.prod(extent / np.maximum(spacing, finest * factor)) <= COARSE_FIT[len(spacing)] * 1.0001

    if cap <= 1.0 or fits(1.0):
        return list(spacing), 1.0
    low, high = 1.0, cap  # bisection: the smallest factor that fits, or the cap
    if fits(cap):
        for _ in range(40):
            low, high = (low, (low + high) / 2) if fits((low + high) / 2) else ((low + high) / 2, high)
    factor = round(high, 3)
    return [float(round(max(s, finest * factor), 6)) for s in spacing], factor


def coarsening_note(factor: float, patch: list[int], median_shape: np.ndarray) -> str:
    """What the coarser grid buys, stated only as far as it is true: whether a patch covers the median image."""
    note = (f"trained {factor:.2f}x coarser than the median spacing; the thinnest label stays at least "
            f"{MIN_DEPTH_VOXELS[len(patch)]:g} voxels deep")
    covered = np.minimum(np.asarray(patch, dtype=float) / np.maximum(median_shape, 1.0), 1.0)
    if np.all(covered >= 0.999):
        return note + ", and a patch covers the whole median image"
    share = ", ".join(f"{100 * c:.0f}%" for c in covered)
    return note + f"; a patch covers {share} of the median image along each axis (array order)"


def mirror_axes(fp: Fingerprint, dim: int) -> tuple[int, ...]:
    """Axes safe to mirror in augmentation and test-time augmentation.

    nnU-Net mirrors every axis. A chest X-ray's right and left lung (or any left/right pair) are told apart by
    side: mirrored left-right, the right lung looks like the left one but keeps its label. Where two foreground
    labels lie on opposite sides of an axis (centres beyond ``SIDED_MARGIN`` of the middle, in the median case),
    that axis is not mirrored.
    """
    centres = [c for v, c in fp.class_centroid_median.items() if v != 0 and len(c) == dim]
    low = {axis for axis in range(dim) if any(c[axis] < 0.5 - SIDED_MARGIN for c in centres)}
    high = {axis for axis in range(dim) if any(c[axis] > 0.5 + SIDED_MARGIN for c in centres)}
    sided = low & high
    return tuple(axis for axis in range(dim) if axis not in sided)


def channel_normalization(fp: Fingerprint) -> list[ChannelNorm]:
    """nnU-Net's schemes: CT from the data set's foreground statistics, 8-bit colour per channel, the rest z-scored
    per case (inside the content when cropping shows a background around it, see ``MASKED_NORM_BELOW``)."""
    masked = fp.content_box_fraction_median < MASKED_NORM_BELOW
    norms = []
    rgb = fp.dim == 2 and fp.channels == 3 and all(i.min >= 0 and i.max <= 255 for i in fp.intensities)
    for c, stats in enumerate(fp.intensities):
        name = fp.channel_names.get(c, "").strip().upper()
        if name == "CT" or name.startswith("CT "):
            norms.append(ChannelNorm("ct", stats.mean, max(stats.std, 1e-6), stats.percentile_00_5,
                                     stats.percentile_99_5))
        elif rgb:
            norms.append(ChannelNorm("rgb"))
        else:
            norms.append(ChannelNorm("zscore", nonzero_mask=masked))
    return norms


def topology(patch: list[int], spacing: list[float], max_stages: int) -> list[list[int]]:
    """Per-stage strides: halve an axis while its map stays >= 4 voxels and it is not much coarser than others."""
    size = np.asarray(patch, dtype=np.float64)
    current = np.asarray(spacing, dtype=np.float64)
    strides = []
    for _ in range(max_stages - 1):
        finest = current.min()
        stride = [2 if size[i] / 2 >= MIN_FEATURE_MAP and current[i] <= 2 * finest else 1 for i in range(len(size))]
        if all(s == 1 for s in stride):
            break
        strides.append(stride)
        size = size / np.asarray(stride)
        current = current * np.asarray(stride)
    return strides


def _divisor(strides: list[list[int]], dims: int) -> np.ndarray:
    return np.prod(np.asarray(strides, dtype=np.int64), axis=0) if strides else np.ones(dims, np.int64)


def patch_size(median_shape: list[float], spacing: list[float], budget: Budget) -> tuple[list[int], list[list[int]]]:
    """A patch covering the median case, shrunk along its relatively largest axis until it fits the budget."""
    patch = np.maximum(np.round(np.asarray(median_shape)), MIN_FEATURE_MAP).astype(np.int64)
    while True:
        strides = topology(patch.tolist(), spacing, budget.max_stages)
        divisor = _divisor(strides, len(patch))
        rounded = (np.ceil(patch / divisor) * divisor).astype(np.int64)
        if np.prod(rounded) <= budget.max_patch_voxels or np.all(patch <= MIN_FEATURE_MAP * 2):
            return rounded.tolist(), strides
        physical = patch * np.asarray(spacing)
        axis = int(np.argmax(physical))
        patch[axis] = max(MIN_FEATURE_MAP * 2, int(patch[axis] * 0.9))


def estimate_training_bytes(patch: list[int], strides: list[list[int]], features: list[int], batch: int) -> int:
    """Rough activation memory of one training step (stored activations for backward, fp32)."""
    voxels = float(np.prod(patch))
    total = 0.0
    for level, width in enumerate(features):
        if level > 0:
            voxels /= float(np.prod(strides[level - 1]))
        total += voxels * width * 12  # conv outputs, norms, activations, decoder copies, gradients
    return int(total * 4 * batch)


def planned_precision(machine: Machine) -> str:
    """bf16 where the machine computes it natively, fp16 on a GPU without bf16 (tensor cores), else fp32."""
    if machine.bf16:
        return "bf16"
    return "fp16" if machine.kind == "cuda" else "fp32"


def optimizer_for(machine: Machine, name: OptimizerName | None = None) -> tuple[OptimizerName, float]:
    """Optimiser and base learning rate (the name is checked with the rest of the plan, in ``Plan``).

    nnU-Net's SGD (momentum 0.99, LR 0.01) needs thousands of steps: its momentum alone averages over ~100 steps.
    A CPU gets a few hundred steps in 5-15 minutes. In a 100-step hippocampus training SGD had not left the
    all-background solution (Dice 0.0), while AdamW at 3e-3 reached Dice 0.29 (0.0 at 1e-2): a measurement made
    before `benchmarks/train_budget.py` recorded its runs (benchmarks/results.md cites it as an earlier one).
    """
    name = name or ("adamw" if machine.kind == "cpu" else "sgd")
    return name, (ADAMW_LR if name == "adamw" else SGD_LR)


def make_plan(
    fp: Fingerprint,
    dim: int | None = None,
    machine: Machine | None = None,
    model: ModelName = "unet",
    loss: LossName = "dice_ce",
    optimizer: OptimizerName | None = None,
    label_codes: LabelCodes | None = None,
) -> Plan:
    """Plan preprocessing and network for this data set on this machine (``Machine.detect()`` when not given).

    A ``model``, ``loss`` or ``optimizer`` outside its ``Literal`` choices raises :class:`MedsegError`.
    ``label_codes`` (``--label-codes FILE``) code the labels' DICOM SEG segments where medseg's table does not.
    """
    machine = machine or Machine.detect()
    dim = dim or fp.dim
    if dim > fp.dim:
        raise MedsegError(f"a {dim}D network cannot be trained on {fp.dim}D images", fix="use --dim 2d")
    if dim != fp.dim:
        raise MedsegError("2D networks on 3D volumes are not supported yet", fix="use --dim 3d for 3D data")
    budget = BUDGETS[(machine.kind, dim)]
    spacing = target_spacing(fp)
    notes = []
    spacing, coarsen = coarsened_spacing(fp, spacing, machine)
    median_shape = (np.median(np.asarray(fp.shapes) * np.asarray(fp.spacings), axis=0) / np.asarray(spacing))
    patch, strides = patch_size(median_shape.tolist(), spacing, budget)
    if coarsen > 1.0:
        notes.append(coarsening_note(coarsen, patch, median_shape))
    features = [min(budget.base_features * 2**i, budget.max_features) for i in range(len(strides) + 1)]
    batch = int(np.clip(round(budget.batch_voxels / np.prod(patch)), 2, 32))
    batch = max(2, min(batch, max(2, int(0.05 * fp.num_cases * np.prod(median_shape) / np.prod(patch)) or 2)))
    available = machine.memory_bytes * 0.4
    while estimate_training_bytes(patch, strides, features, batch) > available:
        if batch > 2:
            batch -= 1
        elif max(patch) > MIN_FEATURE_MAP * 4:
            axis = int(np.argmax(patch))
            patch[axis] = int(patch[axis] // 2)
            strides = topology(patch, spacing, budget.max_stages)
            divisor = _divisor(strides, len(patch))
            patch = (np.ceil(np.asarray(patch) / divisor) * divisor).astype(int).tolist()
            features = features[: len(strides) + 1]
        else:
            raise MedsegError("not enough memory for even the smallest plan", fix="free memory or use a bigger machine")
        notes.append("patch/batch reduced to fit memory")
    optimizer_name, learning_rate = optimizer_for(machine, optimizer)
    mirrored = mirror_axes(fp, dim)
    if len(mirrored) < dim:
        notes.append(f"not mirrored along axes {sorted(set(range(dim)) - set(mirrored))} (array order): labels there "
                     "are told apart by side")
    norms = channel_normalization(fp)
    body_channel = next((c for c, n in enumerate(norms) if n.scheme == "ct"), None)
    if body_channel is not None:
        notes.append("CT: cropped to the body (above -500 HU, holes filled); nothing outside it is labelled")
    if fp.regions:
        if loss not in ("dice_ce", "dice_bce"):
            raise MedsegError(f"loss {loss!r} cannot train regions", fix="regions train with dice_bce (the default)")
        loss = "dice_bce"
        notes.append(f"{len(fp.regions)} regions ({', '.join(r.name for r in fp.regions)}): one sigmoid output each, "
                     "trained with Dice + binary cross-entropy, painted back to labels in regions_class_order")
    if fp.label_values:
        shown = ", ".join(f"{v}->{c}" for c, v in sorted(fp.label_values.items()))
        notes.append(f"declared label values are not 0..K: trained as consecutive classes ({shown}), masks written "
                     "with the declared values")
    return code_labels(Plan(
        dataset_name=fp.dataset_name,
        dim=dim,
        data_dim=fp.dim,
        channels=fp.channels,
        channel_names=dict(fp.channel_names),
        labels=dict(fp.labels),
        target_spacing=spacing,
        normalization=norms,
        body_channel=body_channel,
        patch_size=[int(p) for p in patch],
        batch_size=batch,
        model=model,
        features=features,
        strides=[[int(s) for s in stride] for stride in strides],
        deep_supervision=model != "fcn",
        loss=loss,
        optimizer=optimizer_name,
        learning_rate=learning_rate,
        augment=AugmentConfig(mirror_axes=mirrored),
        precision=planned_precision(machine),
        median_shape=[round(float(s), 2) for s in median_shape],
        device_kind=machine.kind,
        notes=notes,
        regions=list(fp.regions),
        label_values=dict(fp.label_values),
    ), label_codes)


_UNCODED_NOTE = "coded as Tissue in DICOM SEG"


def code_labels(plan: Plan, given: LabelCodes | None = None) -> Plan:
    """``plan`` with ``label_codes`` for each foreground label: ``given`` first, then the plan's own (a
    fine-tuned or hand-made plan keeps its codes), then medseg's table; a note names labels left as Tissue."""
    names = [plan.labels[v] for v in plan.foreground_labels]
    codes, uncoded = resolve_codes(names, given, plan.label_codes)
    notes = [note for note in plan.notes if _UNCODED_NOTE not in note]
    if uncoded:
        notes.append(f"label(s) {', '.join(uncoded)} {_UNCODED_NOTE} (medseg's table does not know them): give "
                     "`--label-codes FILE` to `medseg train` or `medseg plan` (see medseg.io.label_codes)")
    return replace(plan, label_codes=codes, notes=notes)

