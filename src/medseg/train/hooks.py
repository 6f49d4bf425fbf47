"""Training hooks: progress bar, logs (JSONL + CSV), curves. The loop calls them; they never steer it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class Hook:
    def on_start(self, trainer: Any) -> None: ...
    def on_step(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_validation(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_end(self, trainer: Any) -> None: ...


class ProgressHook(Hook):
    """A rich progress bar: step, loss, validation Dice, time left."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None
        self.val = float("nan")

    def on_start(self, trainer: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]fold {task.fields[fold]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("step {task.fields[step]}"), TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("val Dice {task.fields[val]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=1000, fold=trainer.fold_name, step=0,
                                           loss=float("nan"), val=float("nan"))

    def on_step(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=int(1000 * min(record["progress"], 1.0)),
                                 step=record["step"], loss=record["loss"], val=self.val)

    def on_validation(self, trainer: Any, record: dict[str, Any]) -> None:
        self.val = record["val_dice_mean"]

    def on_end(self, trainer: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=1000, val=self.val)
            self.progress.stop()


class LogHook(Hook):
    """Every step and validation as JSON lines, and the validations as CSV (one row each)."""

    def __init__(self, folder: Path, every: int = 10) -> None:
        self.folder = folder
        self.every = every
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "validation.csv"

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_step(self, trainer: Any, record: dict[str, Any]) -> None:
        if record["step"] % self.every == 0:
            self._append({"event": "step", **record})

    def on_validation(self, trainer: Any, record: dict[str, Any]) -> None:
        self._append({"event": "validation", **record})
        new = not self.csv.exists()
        flat = {k: v for k, v in record.items() if not isinstance(v, dict)}
        flat.update({f"dice_{k}": v for k, v in record.get("val_dice", {}).items()})
        with open(self.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(flat))
            if new:
                writer.writeheader()
            writer.writerow(flat)


class CurveHook(Hook):
    """Loss and mean validation Dice against time, drawn once as a PNG when training ends.

    Steps and validations are only collected while training runs; nothing is drawn before the end, so a run
    that crashes leaves no curve (``log.jsonl`` has every validation, and ``medseg report`` draws from it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[tuple[float, float]] = []
        self.vals: list[tuple[float, float]] = []

    def on_step(self, trainer: Any, record: dict[str, Any]) -> None:
        self.steps.append((record["elapsed_s"], record["loss"]))

    def on_validation(self, trainer: Any, record: dict[str, Any]) -> None:
        self.vals.append((record["elapsed_s"], record["val_dice_mean"]))

    def on_end(self, trainer: Any) -> None:
        if not self.steps:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from medseg.io.atomic import atomic_path

        fig, ax = plt.subplots(figsize=(7, 4))
        t, loss = np.asarray(self.steps).T
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(t[: len(smooth)] / 60, smooth, color="tab:blue", label="training loss")
        ax.set_xlabel("minutes")
        ax.set_ylabel("loss")
        if self.vals:
            ax2 = ax.twinx()
            vt, vd = np.asarray(self.vals).T
            ax2.plot(vt / 60, vd, "o-", color="tab:orange", label="validation Dice")
            ax2.set_ylabel("mean foreground Dice")
            ax2.set_ylim(0, 1)
        ax.set_title(f"training curve, fold {trainer.fold_name}")
        fig.tight_layout()
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
