"""Best, median and worst cases: reference contours over prediction fills on the image (or a blank background)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medseg.colours import label_colour
from medseg.errors import MedsegError
from medseg.io import Image, read_image
from medseg.report.plots import new_figure

MAX_PIXELS = 320  # longest side of a displayed view, after downsampling


@dataclass
class CaseScore:
    """One evaluated case: its files and Dice per label value."""

    case: str
    prediction: str
    reference: str
    dice: dict[int, float] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        finite = [d for d in self.dice.values() if math.isfinite(d)]
        return float(np.mean(finite)) if finite else float("nan")


def pick_cases(scores: list[CaseScore]) -> list[tuple[str, CaseScore]]:
    """``[(role, case)]`` for the best, median and worst case by mean Dice; roles merge when cases coincide."""
    ranked = sorted((s for s in scores if math.isfinite(s.mean_dice)), key=lambda s: (-s.mean_dice, s.case))
    if not ranked:
        return []
    picks: dict[str, list[str]] = {}
    order: list[CaseScore] = []
    for role, score in (("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])):
        if score.case not in picks:
            picks[score.case] = []
            order.append(score)
        picks[score.case].append(role)
    return [(" / ".join(picks[s.case]), s) for s in order]


@dataclass
class View:
    name: str
    image: np.ndarray | None  # (Y, X) grey or (Y, X, 3) RGB, [0, 1] once strided; None: blank background
    reference: np.ndarray
    prediction: np.ndarray
    aspect: float  # row spacing / column spacing


def resolve(path: str | Path, bases: list[Path]) -> Path:
    """An absolute path as is; a relative one against the first base where it exists (else the first base)."""
    path = Path(path)
    if path.is_absolute():
        return path
    for base in bases:
        if (base / path).exists():
            return base / path
    return bases[0] / path if bases else path


class ImageFinder:
    """Find the input image of a prediction through ``predictions.json`` in the prediction's folder."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[dict[str, Any]]] = {}

    def _entries(self, folder: Path) -> list[dict[str, Any]]:
        if folder not in self._cache:
            try:
                data = json.loads((folder / "predictions.json").read_text())
                cases = data.get("cases", []) if isinstance(data, dict) else []
                self._cache[folder] = [c for c in cases if isinstance(c, dict)]
            except (OSError, json.JSONDecodeError):
                self._cache[folder] = []
        return self._cache[folder]

    def find(self, prediction: Path) -> Path | None:
        folder = prediction.parent
        bases = [folder, Path.cwd()]
        for entry in self._entries(folder):
            output = entry.get("output")
            if not output:
                continue
            out_path = resolve(output, bases)
            same = out_path.name == prediction.name and (
                out_path.resolve() == prediction.resolve() or not out_path.exists())
            if not same:
                continue
            source = entry.get("input")
            if isinstance(source, list):
                source = source[0] if source else None
            return resolve(source, bases) if source else None
        return None


def _display(image: Image) -> tuple[np.ndarray, float, float]:
    """The array to show (channel 0, or (..., 3) RGB for 2D colour photos) and its 1-99 % intensity window."""
    array = image.array
    data = np.moveaxis(array, 0, -1) if image.ndim == 2 and image.channels == 3 else array[0]
    sample = np.asarray(data[tuple(slice(None, None, max(1, s // 64)) for s in data.shape)], dtype=np.float32)
    low, high = (float(v) for v in np.nanpercentile(sample, [1, 99])) if sample.size else (0.0, 1.0)
    if high <= low:
        low, high = float(np.nanmin(sample)), float(np.nanmax(sample))
    return data, low, high


def _scaled(data: np.ndarray | None, low: float, high: float) -> np.ndarray | None:
    if data is None:
        return None
    return np.clip((np.asarray(data, dtype=np.float32) - low) / max(high - low, 1e-6), 0, 1)


def _stride(views: list[View], low: float, high: float) -> list[View]:
    """Downsample to at most MAX_PIXELS a side, then scale the image slices to [0, 1]."""
    out = []
    for view in views:
        step = max(1, math.ceil(max(view.reference.shape) / MAX_PIXELS))
        cut = (slice(None, None, step), slice(None, None, step))
        image = None if view.image is None else _scaled(view.image[cut], low, high)
        out.append(View(view.name, image, view.reference[cut], view.prediction[cut], view.aspect))
    return out


def make_views(reference: Image, prediction: Image, image: Image | None) -> list[View]:
    """One view for 2D; axial, coronal and sagittal planes through the reference's centre of mass for 3D."""
    ref, pred = np.asarray(reference.array[0]), np.asarray(prediction.array[0])
    grey, low, high = _display(image) if image is not None else (None, 0.0, 1.0)
    if reference.ndim == 2:
        sy, sx = reference.spacing_zyx
        return _stride([View("", grey, ref, pred, sy / sx)], low, high)
    from scipy import ndimage

    mask = ref > 0 if (ref > 0).any() else pred > 0
    centre = ndimage.center_of_mass(mask) if mask.any() else [s / 2 for s in ref.shape]
    z, y, x = (int(np.clip(round(c), 0, s - 1)) for c, s in zip(centre, ref.shape))
    sz, sy, sx = reference.spacing_zyx

    def cut(array: np.ndarray | None, plane: str) -> np.ndarray | None:
        if array is None:
            return None
        if plane == "axial":
            return array[z]
        return np.flipud(array[:, y] if plane == "coronal" else array[:, :, x])  # superior up

    views = [View(f"axial z={z}", cut(grey, "axial"), cut(ref, "axial"), cut(pred, "axial"), sy / sx),
             View(f"coronal y={y}", cut(grey, "coronal"), cut(ref, "coronal"), cut(pred, "coronal"), sz / sx),
             View(f"sagittal x={x}", cut(grey, "sagittal"), cut(ref, "sagittal"), cut(pred, "sagittal"), sz / sy)]
    solid = [v for v in views if min(v.reference.shape) >= 2]  # not e.g. a 2D image stored as a 1-slice volume
    return _stride(solid or views[:1], low, high)


def overlay_figure(views: list[View], names: dict[int, str], title: str) -> Any:
    """Prediction as a translucent fill and reference as a solid contour, one colour per label."""
    width = sum(max(2.2, min(4.2, 3.2 * v.reference.shape[1] / max(v.reference.shape[0] * v.aspect, 1)))
                for v in views)
    present = sorted(set(names) | {int(v) for view in views for v in np.unique(view.prediction) if v}
                     | {int(v) for view in views for v in np.unique(view.reference) if v})
    height = 3.9 if len(views) > 1 else 4.8
    width = max(width, 4.4, min(1.9 * len(present), 9.0))
    columns = max(1, min(len(present), int(width / 1.9 + 1e-6)))  # one label a column: reference above prediction
    legend_rows = math.ceil(2 * len(present) / columns)
    fig = new_figure(width, height + 0.22 * legend_rows, layout=None)  # fixed layout: images only, fast
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / fig.get_figheight(),
                        bottom=(0.12 + 0.22 * legend_rows) / fig.get_figheight(), wspace=0.04)
    axes = np.atleast_1d(fig.subplots(1, len(views)))
    for ax, view in zip(axes, views):
        if view.image is None:
            ax.imshow(np.full(view.reference.shape, 0.93), cmap="gray", vmin=0, vmax=1, aspect=view.aspect)
        else:
            ax.imshow(view.image, cmap="gray", vmin=0, vmax=1, aspect=view.aspect, interpolation="nearest")
        fill = np.zeros((*view.prediction.shape, 4), np.float32)
        for value in present:
            mask = view.prediction == value
            if mask.any():
                fill[mask] = (*_rgb(label_colour(value)), 0.4)
        ax.imshow(fill, aspect=view.aspect, interpolation="nearest")
        for value in present:
            mask = view.reference == value
            if mask.any() and not mask.all() and min(mask.shape) >= 2:
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[label_colour(value)], linewidths=1.6)
        ax.set_title(view.name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = []
    for value in present:
        name = names.get(value, f"label {value}")
        handles.append(Line2D([], [], color=label_colour(value), lw=2, label=f"{name}: reference"))
        handles.append(Patch(facecolor=label_colour(value), alpha=0.45, label=f"{name}: prediction"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def _rgb(colour: str) -> tuple[float, float, float]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i: i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def case_overlay(score: CaseScore, role: str, names: dict[int, str], bases: list[Path],
                 finder: ImageFinder) -> tuple[Any, str]:
    """The overlay figure of one case and a caption; raises MedsegError when its masks cannot be read."""
    pred_path, ref_path = resolve(score.prediction, bases), resolve(score.reference, bases)
    prediction, reference = read_image(pred_path), read_image(ref_path)
    if prediction.shape != reference.shape:
        raise MedsegError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}",
                          pred_path)
    notes = []
    image = None
    source = finder.find(pred_path)
    if source is None:
        notes.append("input image not found (no predictions.json entry): contours on a blank background")
    else:
        try:
            image = read_image(source)
            if image.shape != reference.shape:
                notes.append(f"input image {source.name} is on another grid: contours on a blank background")
                image = None
        except MedsegError as exc:
            notes.append(f"input image unreadable ({exc.what}): contours on a blank background")
    title = f"{role}: {score.case} (mean Dice {score.mean_dice:.3f})"
    fig = overlay_figure(make_views(reference, prediction, image), names, title)
    dice = ", ".join(f"{names.get(v, f'label {v}')} {d:.3f}" for v, d in sorted(score.dice.items()))
    caption = f"{role}: {score.case}. Dice {dice}." + (f" {'; '.join(notes)}." if notes else "")
    return fig, caption
