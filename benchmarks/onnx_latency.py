"""Seconds per MSD Hippocampus case, torch vs onnxruntime, same bundle, same cases, in one process.

Usage: python benchmarks/onnx_latency.py --bundle DIR [--cases 20] [--tta]
Exports the bundle's folds to ONNX in a temporary copy of the bundle (the bundle itself is left alone), checks
parity on the first case, then times ``Predictor.predict`` (preprocessing, sliding window, restoration) per case
for each backend after one warm-up case; model loading is not timed. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import data_set, emit

from medseg.bundle import load_bundle
from medseg.export.onnx import export_onnx, parity_check
from medseg.infer.predict import PredictOptions, Predictor
from medseg.io import read_image
from medseg.preprocess import preprocess_image

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    root = data_set("msd_hippocampus")
    test = json.loads((root / "split.json").read_text())["test"][: args.cases]
    images = [read_image(root / "imagesTr" / f"{case}.nii.gz") for case in test]
    work = Path(tempfile.mkdtemp(prefix="medseg_onnx_"))
    copy = work / "bundle"
    shutil.copytree(args.bundle, copy)
    bundle = load_bundle(copy)
    start = time.perf_counter()
    export_onnx(bundle)
    export_seconds = time.perf_counter() - start
    paths = {fold: copy / f"fold_{fold}.onnx" for fold in bundle.folds}
    parity = parity_check(bundle, paths, preprocess_image(images[0], bundle.plan)[0])
    figures: dict = {"cases": len(images), "tta": args.tta, "folds": len(bundle.folds),
                     "export_seconds": round(export_seconds, 2),
                     "parity": [p.to_dict() for p in parity]}
    labels: dict[str, list[np.ndarray]] = {}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor(bundle, PredictOptions(backend=backend, tta=args.tta))
        predictor.predict(images[0])  # warm-up: first-call allocations, onnxruntime graph optimisation
        seconds, labels[backend] = [], []
        for image in images:
            result = predictor.predict(image)
            seconds.append(result.seconds)
            labels[backend].append(result.labels.array)
        figures[backend] = {"seconds_per_case": round(statistics.mean(seconds), 4),
                            "median_seconds": round(statistics.median(seconds), 4)}
    figures["speedup_onnxruntime"] = round(figures["torch"]["seconds_per_case"]
                                           / figures["onnxruntime"]["seconds_per_case"], 3)
    same = [float((a == b).mean()) for a, b in zip(labels["torch"], labels["onnxruntime"])]
    figures["label_agreement_min"] = round(min(same), 6)
    shutil.rmtree(work, ignore_errors=True)
    emit("onnx_latency", figures)
