"""Peak memory predicting a CT-sized volume (512 x 512 x 300) with a 3D bundle (target: under 3 GiB).

The bundle is built here from a plan for a 2 mm CT task (random weights: memory does not depend on their values,
and the prediction is still a real sliding window over the whole volume, restoration and writing included).
Runs the real CLI in a subprocess and reads its peak resident memory from the kernel (ru_maxrss of the child).
Windows do not overlap (--step 1.0) to keep the run to minutes: the sliding window's buffers (the logits and
weight maps of the whole volume) have the same size whatever the overlap, so the peak does not depend on it.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit

from medseg.bundle import write_bundle_fold
from medseg.io import Image, write_image
from medseg.models import build_network
from medseg.models.weights import save_weights
from medseg.plan import ChannelNorm, Plan

if __name__ == "__main__":
    work = Path(tempfile.mkdtemp(prefix="medseg_memory_"))
    plan = Plan(dataset_name="SyntheticCT", dim=3, data_dim=3, channels=1, channel_names={0: "CT"},
                labels={0: "background", 1: "organ", 2: "lesion"}, target_spacing=[2.0, 1.6, 1.6],
                normalization=[ChannelNorm("ct", 40.0, 60.0, -100.0, 300.0)], patch_size=[64, 96, 96],
                batch_size=2, features=[16, 32, 64, 128, 256], strides=[[2, 2, 2]] * 4, precision="bf16")
    model = build_network(plan)
    weights = save_weights(model, work / "w.safetensors")
    write_bundle_fold(work / "bundle", plan, "0", weights, {})
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 60, size=(300, 512, 512)).astype(np.int16)  # Z, Y, X
    write_image(Image.from_array(volume[None], spacing=(0.8, 0.8, 2.0)), work / "ct.nii.gz")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medseg", "predict", str(work / "bundle"), str(work / "ct.nii.gz"),
                    "-o", str(work / "out"), "--no-tta", "--no-progress", "--step", "1.0"], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    emit("predict_memory", {"volume": [512, 512, 300], "spacing_mm": [0.8, 0.8, 2.0], "patch": plan.patch_size,
                            "peak_rss_gib": round(peak / 2**30, 2), "target_gib": 3.0, "seconds": round(seconds, 1)})
