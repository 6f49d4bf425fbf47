"""Seconds `medseg evaluate` takes on the 52 MSD Hippocampus test cases with HD95 (target: under 10 s).

Each test-list label map is shifted by one voxel along x (zero filled) and written as NIfTI to a temporary
folder as the "prediction"; the originals are copied beside it as the reference. ``seconds`` is the time of
``evaluate_folders`` (reading, checking grids, all metrics); ``import_seconds`` the one-off import of
``medseg.evaluate`` (numpy, scipy, SimpleITK, nibabel; neither torch nor MONAI), which a fresh ``medseg evaluate``
process pays on top; ``cli_seconds`` the whole ``medseg evaluate`` command in a fresh process (start-up, imports,
scoring and writing the report), what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import data_set, emit

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: automatic)")
    args = parser.parse_args()
    start = time.perf_counter()
    from medseg.evaluate import evaluate_folders
    from medseg.io import read_image, write_image

    import_seconds = time.perf_counter() - start
    root = data_set("msd_hippocampus")
    cases = json.loads((root / "split.json").read_text())["test"]
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, ref_dir = Path(tmp) / "pred", Path(tmp) / "ref"
        ref_dir.mkdir()
        for case in cases:
            source = root / "labelsTr" / f"{case}.nii.gz"
            shutil.copy(source, ref_dir / source.name)
            image = read_image(source)
            shifted = image.array.copy()
            shifted[..., 1:] = image.array[..., :-1]
            shifted[..., 0] = 0
            write_image(image.with_array(shifted), pred_dir / source.name)
        start = time.perf_counter()
        result = evaluate_folders(pred_dir, ref_dir, labels=root / "dataset.json", workers=args.workers or None)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medseg", "evaluate", str(pred_dir), str(ref_dir), "-o",
                        str(Path(tmp) / "report"), "--labels", str(root / "dataset.json")], check=True,
                       stdout=subprocess.DEVNULL)
        cli_seconds = time.perf_counter() - start
    summary = result.summary()
    emit("evaluate_speed", {"cases": summary["cases"], "seconds": round(seconds, 2),
                            "import_seconds": round(import_seconds, 2), "cli_seconds": round(cli_seconds, 2),
                            "target_seconds": 10,
                            "mean_dice": round(summary["mean_dice"], 4),
                            "hd95_mm": {k: round(v["hd95_mm"]["mean"], 3) for k, v in summary["per_class"].items()}})
