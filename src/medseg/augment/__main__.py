"""Quick timing of one 3D batch (2, 1, 40, 56, 40): ``python -m medseg.augment``. Prints, asserts nothing."""

from __future__ import annotations

import time

import torch

from medseg.augment import AugmentConfig, BatchAugmenter


def main() -> None:
    image = torch.randn(2, 1, 40, 56, 40)
    label = (torch.rand(2, 1, 40, 56, 40) > 0.7).to(torch.uint8)
    settings = {
        "defaults": AugmentConfig(),
        "everything (p=1, elastic, lowres)": AugmentConfig(
            p_rotate=1, p_scale=1, p_elastic=1, p_gamma=1, p_gamma_invert=1, p_brightness=1, p_contrast=1,
            p_noise=1, p_blur=1, p_lowres=1),
    }
    for name, config in settings.items():
        aug = BatchAugmenter(config, spatial_dims=3, seed=0)
        aug(image, label)  # warm-up
        times = []
        for _ in range(7):
            start = time.perf_counter()
            aug(image, label)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        print(f"{name}: min {times[0]:.1f} ms, median {times[len(times) // 2]:.1f} ms per batch "
              f"{tuple(image.shape)} (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
