"""Random training patches with foreground oversampling (nnU-Net: a third of patches centred on a class)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medseg.preprocess import CachedCase


class PatchSampler:
    """Draws batches of patches from preprocessed cases; padding with zeros where a case is smaller."""

    def __init__(self, cases: Sequence[CachedCase], patch_size: Sequence[int], batch_size: int,
                 foreground_fraction: float = 0.33, seed: int = 0) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = list(cases)
        self.patch = np.asarray(patch_size, dtype=np.int64)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction
        self.rng = np.random.default_rng(seed)
        # Cases are small next to RAM for most data sets; memory-mapped arrays are read on first touch.
        self.channels = int(self.cases[0].data.shape[0])

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.zeros((self.batch_size, self.channels, *self.patch), dtype=np.float32)
        labels = np.zeros((self.batch_size, 1, *self.patch), dtype=np.int64)
        # At least round(fraction * batch) patches are forced onto foreground, as nnU-Net does.
        forced = max(1, int(round(self.foreground_fraction * self.batch_size))) if self.foreground_fraction else 0
        for b in range(self.batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            shape = np.asarray(case.data.shape[1:], dtype=np.int64)
            start = self._start(case, shape, force_foreground=b >= self.batch_size - forced)
            stop = start + self.patch
            src = tuple(slice(max(a, 0), min(b_, s)) for a, b_, s in zip(start, stop, shape))
            dst = tuple(slice(max(a, 0) - a, max(a, 0) - a + (sl.stop - sl.start)) for a, sl in zip(start, src))
            images[(b, slice(None), *dst)] = case.data[(slice(None), *src)]
            labels[(b, 0, *dst)] = case.seg[src]
        return torch.from_numpy(images), torch.from_numpy(labels)

    def _start(self, case: CachedCase, shape: np.ndarray, force_foreground: bool) -> np.ndarray:
        """Patch start (may be negative or beyond the case: those parts are padded)."""
        locations = case.props.class_locations if force_foreground else {}
        present = [k for k, v in locations.items() if v]
        if present:
            chosen = locations[present[int(self.rng.integers(len(present)))]]
            centre = np.asarray(chosen[int(self.rng.integers(len(chosen)))], dtype=np.int64)
            return centre - self.patch // 2
        low = np.minimum(0, shape - self.patch)  # a case smaller than the patch lands anywhere inside it
        high = np.maximum(0, shape - self.patch)
        return np.array([int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)], dtype=np.int64)
