"""One real CT through `medseg predict` (the CLI, in a subprocess): seconds, peak RSS, and the mask's grid.

Usage: python benchmarks/predict_ct.py --bundle DIR [--image ../shared/data/ircadb_ct/imagesTr/ircadb_07_0000.nii.gz]
Issue 18's target: a 512x512x151 CT in < 60 s on the 2-core CPU, peak RSS < 3 GiB, the mask on the input's exact
grid (shape, spacing, origin, direction, and the NIfTI affine bit for bit). Peak RSS is the child's ru_maxrss.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _common import SHARED_DATA, emit

from medseg.bundle import load_bundle
from medseg.io import read_image

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=SHARED_DATA / "ircadb_ct/imagesTr/ircadb_07_0000.nii.gz")
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medseg-predict-ct-") as out:
        command = [str(Path(sys.executable).with_name("medseg")), "predict", str(args.bundle), str(args.image),
                   "-o", out, "--no-progress", "--tta" if args.tta else "--no-tta"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (mask_path,) = Path(out).glob("*.nii.gz")
        scan, mask = read_image(args.image), read_image(mask_path)
        same_affine = bool(np.array_equal(nib.load(args.image).affine, nib.load(mask_path).affine))
        plan = load_bundle(args.bundle).plan
        emit("predict_ct", {
            "image": args.image.name, "shape": list(scan.shape), "spacing": list(scan.spacing),
            "seconds_incl_startup": round(seconds, 1), "peak_rss_mib": round(peak),
            "same_grid": scan.same_geometry(mask), "same_affine": same_affine, "tta": args.tta,
            "plan": {"spacing": plan.target_spacing, "patch": plan.patch_size, "precision": plan.precision},
        })
