"""Sliding-window seconds for one large volume in fp32 and under bf16 autocast, same bundle, same process.

Usage: python benchmarks/predict_precision.py --bundle DIR [--shape 120 160 160] [--repeats 2]
Why: a bundle records the precision of the machine that trained it. This measures what bf16 costs or saves on
*this* CPU, which decides ``medseg.runtime.runtime_precision`` (bf16 only with native bf16 in hardware).
A random volume is enough: the time does not depend on the values. Prints one JSON line, with the precision
that prediction would choose here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import emit

from medseg.bundle import load_bundle
from medseg.infer.sliding import predict_logits
from medseg.runtime import cpu_has_native_bf16, keep_freed_memory, runtime_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs="+", default=[120, 160, 160], help="spatial size, array order")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as `Predictor` does
    bundle = load_bundle(args.bundle)
    model = bundle.load_models(bundle.folds[:1])[0]
    volume = torch.randn(bundle.plan.channels, *args.shape, generator=torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both
        for precision in seconds:
            start = time.perf_counter()
            predict_logits(model, volume, bundle.plan.patch_size, overlap=bundle.plan.sliding_window_overlap,
                           precision=precision)
            seconds[precision].append(round(time.perf_counter() - start, 3))
    best = {precision: min(times) for precision, times in seconds.items()}
    emit("predict_precision", {"shape": args.shape, "patch": bundle.plan.patch_size, "seconds": seconds,
                               "bf16_over_fp32": round(best["bf16"] / best["fp32"], 2),
                               "native_bf16": cpu_has_native_bf16(),
                               "chosen_for_a_bf16_bundle": runtime_precision("bf16")})


if __name__ == "__main__":
    main()
