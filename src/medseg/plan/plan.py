"""The plan: one typed, JSON-serialisable object that drives preprocessing, training and inference.

It travels inside every model bundle (``plan.json``), so a bundle can be used without the data set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg import __version__
from medseg.data.regions import Region
from medseg.errors import MedsegError
from medseg.io.atomic import write_text_atomic
from medseg.plan.augment_config import AugmentConfig
from medseg.plan.choices import (
    LOSS_CHOICES,
    MEMORY_FORMAT_CHOICES,
    MODEL_CHOICES,
    OPTIMIZER_CHOICES,
    PRECISION_CHOICES,
    LossName,
    MemoryFormat,
    ModelName,
    OptimizerName,
    Precision,
    check_choice,
)
from medseg.plan.fields import check_fields

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

    from medseg.io.label_codes import LabelCodes

PLAN_VERSION = 1


@dataclass
class ChannelNorm:
    """How one channel is normalised.

    ``ct``: clip to the data set's foreground [0.5, 99.5] percentiles, then z-score with the data set's
    foreground mean and std (nnU-Net's CT scheme). ``zscore``: per-case mean and std (MRI and others).
    ``rgb``: per-case, per-channel z-score of 8-bit colour data. ``none``: left as read.
    ``nonzero_mask`` (``zscore``): the mean and std come from the content (voxels off the background in any
    channel, :func:`medseg.data.check.content_mask`), and the rest is set to 0, as nnU-Net's ``use_mask_for_norm``
    does for skull-stripped MRI.
    """

    scheme: str
    mean: float = 0.0
    std: float = 1.0
    clip_low: float | None = None
    clip_high: float | None = None
    nonzero_mask: bool = False


@dataclass
class Plan:
    """Everything preprocessing, training and inference need; ``model``, ``loss``, ``optimizer`` and ``precision``
    are checked against their ``Literal`` choices (:mod:`medseg.plan.choices`) when a plan is made or loaded."""

    dataset_name: str
    dim: int  # network dimension: 2 or 3
    data_dim: int  # dimension of the images on disk
    channels: int
    channel_names: dict[int, str]
    labels: dict[int, str]
    target_spacing: list[float]  # array order, mm
    normalization: list[ChannelNorm]
    patch_size: list[int]  # array order
    batch_size: int
    model: ModelName = "unet"
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[list[int]] = field(default_factory=list)
    deep_supervision: bool = True
    loss: LossName = "dice_ce"
    optimizer: OptimizerName = "sgd"
    learning_rate: float = 0.01
    weight_decay: float = 3e-5
    crop_to_nonzero: bool = True
    # the CT channel whose body (medseg.preprocess.body) bounds the crop and the prediction; None: no body mask
    body_channel: int | None = None
    foreground_oversample: float = 0.33
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Precision = "fp32"  # "bf16" autocast where the hardware runs it fast
    memory_format: MemoryFormat = "contiguous"  # the training layout that measured faster (medseg.train.measure)
    sliding_window_overlap: float = 0.5
    median_shape: list[float] = field(default_factory=list)  # after resampling, array order
    device_kind: str = "cpu"
    notes: list[str] = field(default_factory=list)
    # what planning timed on the machine that made the plan, and why it chose as it did (medseg.train.measure);
    # {} for a plan from the tables alone
    measurements: dict[str, Any] = field(default_factory=dict)
    # region-based classes (medseg.data.regions): one sigmoid output each, trained with dice_bce; [] for softmax
    regions: list[Region] = field(default_factory=list)
    # class value -> the value masks hold on disk, where the declared label values are not 0..K (a 0/255 mask is
    # trained as 0/1 and predicted back as 0/255); {} when they are (see medseg.data.dataset.consecutive_labels)
    label_values: dict[int, int] = field(default_factory=dict)
    # label name -> DICOM SEG codes {"category"|"type"|"modifier": [code, scheme, meaning]}, fixed at plan time so
    # the bundle writes the same terms whatever medseg runs it (medseg.io.label_codes); {} in plans made before
    label_codes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # fine-tuning (``medseg train --init BUNDLE``): the parent bundle's version (medseg.bundle.bundle_version), None
    # for a model trained from scratch; and how it was fine-tuned (lr_scale, parent_learning_rate, label_map
    # {"old": new}, fresh_classes, steps, schedule_scale, fingerprint_differences, parent_bundle); {} when not
    init_from: str | None = None
    fine_tune: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION
    medseg_version: str = __version__

    def __post_init__(self) -> None:
        for name, choices in (("model", MODEL_CHOICES), ("loss", LOSS_CHOICES), ("optimizer", OPTIMIZER_CHOICES),
                              ("precision", PRECISION_CHOICES), ("memory_format", MEMORY_FORMAT_CHOICES)):
            check_choice(name, getattr(self, name), choices)
        if isinstance(self.augment, dict):  # plan.json's form (an old plan may hold {}: every default)
            self.augment = AugmentConfig.from_dict(self.augment)
        self.regions = [Region.from_dict(r) if isinstance(r, dict) else r for r in self.regions]
        check_fields(self)
        self._check_values()
        if bool(self.regions) != (self.loss == "dice_bce"):
            raise MedsegError(f"plan field 'loss' is {self.loss!r} for a plan with {len(self.regions)} regions",
                              fix="regions train with dice_bce (one sigmoid output a region), labels with the others")

    def _check_values(self) -> None:
        """Values the types allow but nothing could run with."""
        problems = []
        if self.dim not in (2, 3) or self.data_dim not in (2, 3) or self.dim > self.data_dim:
            problems.append(f"dim {self.dim} / data_dim {self.data_dim} (2 or 3, dim <= data_dim)")
        if len(self.patch_size) != self.dim or min(self.patch_size, default=0) < 1:
            problems.append(f"patch_size {self.patch_size} ({self.dim} positive sizes)")
        if len(self.target_spacing) not in (self.dim, self.data_dim) or min(self.target_spacing, default=0) <= 0:
            problems.append(f"target_spacing {self.target_spacing} (positive mm)")
        if self.batch_size < 1 or self.channels < 1 or not self.features or min(self.features) < 1:
            problems.append(f"batch_size {self.batch_size}, channels {self.channels}, features {self.features} "
                            "(positive)")
        if self.body_channel is not None and not 0 <= self.body_channel < self.channels:
            problems.append(f"body_channel {self.body_channel} (a channel index below {self.channels}, or null)")
        if not self.labels or min(self.labels) < 0 or len(self.normalization) != self.channels:
            problems.append(f"labels {sorted(self.labels)} and {len(self.normalization)} normalisation(s) for "
                            f"{self.channels} channel(s)")
        if not self.learning_rate > 0 or not 0 <= self.sliding_window_overlap < 1:
            problems.append(f"learning_rate {self.learning_rate}, sliding_window_overlap {self.sliding_window_overlap}")
        if self.label_codes:
            from medseg.io.label_codes import parse_label_codes

            try:
                parse_label_codes(self.label_codes, None)
            except MedsegError as exc:
                problems.append(f"label_codes: {exc.what}")
        if problems:
            raise MedsegError(f"plan has impossible values: {'; '.join(problems)}",
                              fix="re-create the plan with `medseg plan`")

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def foreground_labels(self) -> list[int]:
        return [v for v in sorted(self.labels) if v != 0]

    @property
    def num_outputs(self) -> int:
        """Network output channels: one a region (sigmoid), else one a label value, background included."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def scored_classes(self) -> dict[int, str]:
        """What validation and the model card score, by key: regions ``1..R`` or the foreground label values."""
        if self.regions:
            return {i + 1: r.name for i, r in enumerate(self.regions)}
        return {v: self.labels[v] for v in self.foreground_labels}

    @property
    def class_members(self) -> dict[int, tuple[int, ...]]:
        """The label values each scored class is made of (one value each without regions)."""
        if self.regions:
            return {i + 1: r.values for i, r in enumerate(self.regions)}
        return {v: (v,) for v in self.foreground_labels}

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Spatial axes mirrored in training, hence the only ones test-time augmentation may mirror."""
        axes = self.augment.mirror_axes
        return tuple(range(self.dim)) if axes is None else tuple(int(a) for a in axes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channel_names"] = {str(k): v for k, v in self.channel_names.items()}
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        data["augment"] = self.augment.to_dict()
        data["regions"] = [r.to_dict() for r in self.regions]
        data["label_values"] = {str(k): v for k, v in self.label_values.items()}
        return data

    def segment_codes(self, given: LabelCodes | None = None) -> dict[str, tuple[Code, Code, Code | None]]:
        """The DICOM SEG codes of this plan's labels: ``given`` (``--label-codes`` at predict time) over the
        plan's own."""
        from medseg.io.label_codes import parse_label_codes

        return {**parse_label_codes(self.label_codes, "plan.json label_codes"), **dict(given or {})}

    @property
    def disk_labels(self) -> dict[int, str]:
        """Label names by the value written in masks (the class value unless ``label_values`` renumbers)."""
        return {self.label_values.get(v, v): name for v, name in self.labels.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> Plan:
        if not isinstance(data, dict):
            raise MedsegError(f"is not a valid medseg plan (a JSON {type(data).__name__}, not an object)", source,
                              "re-create it with `medseg plan`")
        version = data.get("version")
        if version != PLAN_VERSION:
            raise MedsegError(
                f"plan version {version} is not supported by medseg {__version__} (expects {PLAN_VERSION})",
                source, "re-plan the data set or use the medseg version that made it",
            )
        try:
            data = dict(data)
            data["channel_names"] = {int(k): v for k, v in data["channel_names"].items()}
            data["labels"] = {int(k): v for k, v in data["labels"].items()}
            data["label_values"] = {int(k): int(v) for k, v in data.get("label_values", {}).items()}
            data["normalization"] = [ChannelNorm(**n) for n in data["normalization"]]
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MedsegError(f"is not a valid medseg plan ({exc})", source,
                              "re-create it with `medseg plan`") from None
        except MedsegError as exc:  # a bad choice (check_choice): name the file it came from
            raise MedsegError(exc.what, exc.path or source, exc.fix) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> Path:
        write_text_atomic(path, self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise MedsegError(f"cannot read plan ({exc})", path, "re-create it with `medseg plan`") from None
        return cls.from_dict(data, path)

    def preprocessing_key(self) -> str:
        """Hash of the fields that change preprocessed data: caches keyed by it are reused across runs."""
        fields = {
            "dim": self.data_dim,
            "spacing": self.target_spacing,
            "norm": [asdict(n) for n in self.normalization],
            "crop": self.crop_to_nonzero,
            **({"body": self.body_channel} if self.body_channel is not None else {}),
            "labels": sorted(self.labels),
            **({"label_values": sorted(self.label_values.items())} if self.label_values else {}),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
