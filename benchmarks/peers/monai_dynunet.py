"""The MONAI peer: the DynUNet tutorial pipeline (MONAI tutorials, modules/dynunet_pipeline, task04), test Dice
against training minutes on the same split and machine as medseg's curve.

Usage (in the peers' venv; setup.sh makes it):
    benchmarks/peers/.venv/bin/python benchmarks/peers/monai_dynunet.py --minutes 2,5,15

The tutorial's task04 settings: 1 mm spacing, z-score on non-zero voxels per channel, patch 40x56x40, batch 2,
DynUNet with kernels 3 and strides 1,2,2,2, deep supervision, Dice+CE, SGD lr 0.01 momentum 0.99 Nesterov,
weight decay 3e-5, poly LR over the run; random crops balanced 1:1 on foreground, zoom, noise, smoothing,
intensity scale/shift and flips. It trains on the split's train list; at each of ``--minutes`` of training time
(evaluation excluded) the test list is predicted with a Gaussian sliding window (overlap 0.5) and scored with
MONAI's DiceMetric on the 1 mm grid, and a JSON line is printed and appended to ../results.jsonl.
This runs the peer as its tutorial does; nothing of medseg is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import DynUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import SHARED_DATA, emit  # noqa: E402  (stdlib and torch only)

PATCH = (40, 56, 40)
CLASSES = 3


def load_transforms(train: bool) -> T.Compose:
    keys = ["image", "label"]
    common = [
        T.LoadImaged(keys), T.EnsureChannelFirstd(keys),
        T.Spacingd(keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        T.SpatialPadd(keys, spatial_size=PATCH),
    ]
    if not train:
        return T.Compose([*common, T.EnsureTyped(keys)])
    return T.Compose([
        *common,
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=1),
        T.RandZoomd(keys, min_zoom=0.9, max_zoom=1.2, mode=("trilinear", "nearest"), align_corners=(True, None),
                    prob=0.15),
        T.RandGaussianNoised("image", std=0.01, prob=0.15),
        T.RandGaussianSmoothd("image", sigma_x=(0.5, 1.15), sigma_y=(0.5, 1.15), sigma_z=(0.5, 1.15), prob=0.15),
        T.RandScaleIntensityd("image", factors=0.3, prob=0.15),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.15),
        T.RandFlipd(keys, spatial_axis=[0], prob=0.5), T.RandFlipd(keys, spatial_axis=[1], prob=0.5),
        T.RandFlipd(keys, spatial_axis=[2], prob=0.5),
        T.EnsureTyped(keys),
    ])


def cases(root: Path, ids: list[str]) -> list[dict]:
    return [{"image": str(root / "imagesTr" / f"{i}.nii.gz"), "label": str(root / "labelsTr" / f"{i}.nii.gz")}
            for i in ids]


def evaluate(network: torch.nn.Module, loader: DataLoader) -> list[float]:
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    network.eval()
    with torch.no_grad():
        for batch in loader:
            logits = sliding_window_inference(batch["image"], PATCH, 4, network, overlap=0.5, mode="gaussian")
            predicted = torch.nn.functional.one_hot(logits.argmax(1), CLASSES).permute(0, 4, 1, 2, 3)
            truth = torch.nn.functional.one_hot(batch["label"][:, 0].long(), CLASSES).permute(0, 4, 1, 2, 3)
            metric(predicted, truth)
    network.train()
    return [round(float(v), 4) for v in metric.aggregate()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "msd_hippocampus")
    parser.add_argument("--minutes", default="2,5,15", help="training minutes at which the test list is scored")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    split = json.loads((args.data / "split.json").read_text())
    checkpoints = [float(m) * 60 for m in args.minutes.split(",")]
    train_set = CacheDataset(cases(args.data, split["train"]), load_transforms(True), num_workers=0, progress=False)
    test_set = CacheDataset(cases(args.data, split["test"]), load_transforms(False), num_workers=0, progress=False)
    train_loader = DataLoader(train_set, batch_size=2, shuffle=True, num_workers=0, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=1, num_workers=0)
    network = DynUNet(3, 1, CLASSES, kernel_size=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
                      upsample_kernel_size=[[2, 2, 2]] * 3, norm_name="instance", deep_supervision=True,
                      deep_supr_num=2, res_block=True)
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, batch=True))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True)
    total = checkpoints[-1]
    trained_s, iterations = 0.0, 0
    network.train()
    tick = time.perf_counter()  # training time counts loading and augmenting batches, as medseg's budget does
    while checkpoints:
        for batch in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (1 - min(trained_s / total, 0.999)) ** 0.9
            optimizer.zero_grad(set_to_none=True)
            outputs = network(batch["image"])
            value = loss(list(torch.unbind(outputs, dim=1)), batch["label"])
            value.backward()
            optimizer.step()
            trained_s += time.perf_counter() - tick
            iterations += 1
            if trained_s >= checkpoints[0]:
                dice = evaluate(network, test_loader)
                emit("peer_msd_hippocampus", {
                    "peer": "monai-dynunet", "monai": __import__("monai").__version__, "precision": "fp32",
                    "train_minutes": round(checkpoints.pop(0) / 60, 2), "train_seconds": round(trained_s, 1),
                    "iterations": iterations, "seconds_per_iteration": round(trained_s / iterations, 3),
                    "dice": dict(zip(["Anterior", "Posterior"], dice)), "mean_dice": round(sum(dice) / len(dice), 4),
                    "test_cases": len(test_set), "last_loss": round(float(value), 4)})
                if not checkpoints:
                    break
            tick = time.perf_counter()  # evaluation is not training time
