"""Report figures drawn with matplotlib's Agg canvas (no pyplot, no global state) and embedded as PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medseg.colours import label_colour

DPI = 80


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Figure, dpi: int = DPI) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _smooth(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window // 2, values[0]), values, np.full(window - 1 - window // 2, values[-1])])
    return np.convolve(padded, kernel, mode="valid")


def training_curves(steps: list[dict[str, Any]], validations: list[dict[str, Any]], names: dict[str, str],
                    title: str) -> Figure:
    """Loss against step (raw and smoothed) beside validation Dice against step (per class and mean)."""
    fig = new_figure(10, 3.4)
    ax_loss, ax_dice = fig.subplots(1, 2)
    points = [(r["step"], r["loss"]) for r in steps if _finite(r.get("step")) and _finite(r.get("loss"))]
    if points:
        step, loss = np.asarray(points, dtype=float).T
        ax_loss.plot(step, loss, color="tab:blue", alpha=0.3, lw=1)
        ax_loss.plot(step, _smooth(loss), color="tab:blue", lw=2, label="training loss (smoothed)")
        ax_loss.legend(loc="upper right", fontsize=8)
    _finish_step_axes(ax_loss, "loss", f"{title}: training loss", None if points else "no step records")
    if validations:
        vsteps = np.asarray([r.get("step", np.nan) for r in validations], dtype=float)
        classes = sorted({k for r in validations for k in r.get("val_dice", {})}, key=_label_key)
        for value in classes:
            dice = np.asarray([_num(r.get("val_dice", {}).get(value)) for r in validations])
            ax_dice.plot(vsteps, dice, "o-", ms=4, lw=1.2, color=label_colour(_label_key(value)[0]),
                         label=names.get(value, f"label {value}"))
        mean = np.asarray([_num(r.get("val_dice_mean")) for r in validations])
        ax_dice.plot(vsteps, mean, "s-", ms=5, lw=2, color="black", label="mean")
        final = [i for i, r in enumerate(validations) if r.get("final")]
        if final:
            ax_dice.plot(vsteps[final], mean[final], "*", ms=14, color="gold", mec="black", label="final")
        ax_dice.set_ylim(0, 1.02)
        ax_dice.legend(loc="lower right", fontsize=8)
    _finish_step_axes(ax_dice, "validation Dice", f"{title}: validation Dice",
                      None if validations else "no validation records")
    return fig


def _finish_step_axes(ax: Any, ylabel: str, title: str, empty_message: str | None) -> None:
    """Axis labels, title and grid of a per-step panel; ``empty_message`` is written across an empty one."""
    if empty_message:
        ax.text(0.5, 0.5, empty_message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def metric_boxplots(values: dict[str, dict[str, list[float]]], titles: dict[str, str],
                    colours: dict[str, str]) -> Figure:
    """One panel per metric, one box per class; ``values[metric][class]`` are the per-case values."""
    fig = new_figure(4.2 * len(values), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(values)))
    rng = np.random.default_rng(0)
    for ax, (metric, per_class) in zip(axes, values.items()):
        names = list(per_class)
        finite = [np.asarray([v for v in per_class[n] if np.isfinite(v)], dtype=float) for n in names]
        dropped = sum(len(per_class[n]) - len(f) for n, f in zip(names, finite))
        if not any(len(f) for f in finite):
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        else:
            positions = [i + 1 for i, f in enumerate(finite) if len(f)]
            data = [f for f in finite if len(f)]
            boxes = ax.boxplot(data, positions=positions, widths=0.5, patch_artist=True, showfliers=False)
            for patch, pos in zip(boxes["boxes"], positions):
                patch.set_facecolor(colours.get(names[pos - 1], "#cccccc"))
                patch.set_alpha(0.45)
            for pos, f in zip(positions, data):
                ax.plot(pos + rng.uniform(-0.12, 0.12, len(f)), f, "o", ms=3, color="black", alpha=0.6)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 3 else 0)
        ax.set_title(titles.get(metric, metric), fontsize=10)
        if metric in ("dice", "iou", "nsd", "precision", "recall", "f1"):
            ax.set_ylim(-0.02, 1.02)
        if dropped:
            ax.set_xlabel(f"{dropped} non-finite value(s) not shown", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _label_key(value: str) -> tuple[int, str]:
    try:
        return int(value), value
    except ValueError:
        return 10**6, value
