"""The nnU-Net peer: nnU-Net v2's default 3d_fullres plan and trainer, test Dice against training minutes on the
same split and machine as medseg's curve.

Usage (in the peers' venv; setup.sh makes it):
    benchmarks/peers/.venv/bin/python benchmarks/peers/nnunet_budget.py --minutes 2,5 [--work /tmp/nnunet_peer]

The split's train list becomes ``Dataset004_Hippocampus`` (two of its cases held out as nnU-Net's validation
fold, which nnU-Net requires), planned and preprocessed by ``nnUNetv2_plan_and_preprocess`` with its defaults.
nnU-Net has no time budget, so its own trainer runs with only the epoch length changed (10 training and 2
validation iterations an epoch instead of 250 and 50, so that the clock is read often; the learning-rate
schedule is still that of 1000 epochs, as in its default run). At each of ``--minutes`` of training time the
network in hand predicts the test list with nnU-Net's own predictor (Gaussian sliding window, step 0.5, no
mirroring, to keep the scoring short), and the Dice per label is printed and appended to ../results.jsonl.
Prediction time is not training time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import SHARED_DATA, emit  # noqa: E402  (stdlib and torch only)

DATASET = "Dataset004_Hippocampus"
HELD_OUT = 2  # training cases nnU-Net validates on
ITERATIONS_PER_EPOCH = 10
VAL_ITERATIONS_PER_EPOCH = 2  # pseudo-Dice batches an epoch (nnU-Net: 50 for 250 iterations); training time


def raw_dataset(data: Path, work: Path, train_ids: list[str]) -> None:
    """nnU-Net v2's raw layout of the train list: ``imagesTr/X_0000.nii.gz`` links, ``labelsTr``, dataset.json."""
    raw = work / "raw" / DATASET
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).mkdir(parents=True, exist_ok=True)
    for case in train_ids:
        for source, target in ((data / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz"),
                               (data / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")):
            if not target.exists():
                target.symlink_to(source)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(train_ids), "file_ending": ".nii.gz"}))


def dice(predicted, truth, label: int) -> float:
    a, b = predicted == label, truth == label
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "msd_hippocampus")
    parser.add_argument("--minutes", default="2,5")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet_peer"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    split = json.loads((args.data / "split.json").read_text())
    for name in ("raw", "preprocessed", "results"):
        (args.work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(args.work / name)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    raw_dataset(args.data, args.work, split["train"])
    plans_file = args.work / "preprocessed" / DATASET / "nnUNetPlans.json"
    plan_seconds = 0.0
    if not plans_file.exists():
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")), "-d", "4", "-c",
                        "3d_fullres", "-np", "2"], check=True, stdout=subprocess.DEVNULL)
        plan_seconds = time.perf_counter() - start
    held_out = split["train"][:HELD_OUT]
    (args.work / "preprocessed" / DATASET / "splits_final.json").write_text(json.dumps(
        [{"train": split["train"][HELD_OUT:], "val": held_out}]))

    import nnunetv2
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(args.threads)
    checkpoints = [float(m) * 60 for m in args.minutes.split(",")]
    reader = SimpleITKIO()
    test = [(reader.read_images([str(args.data / "imagesTr" / f"{c}.nii.gz")]),
             reader.read_seg(str(args.data / "labelsTr" / f"{c}.nii.gz"))[0]) for c in split["test"]]

    class BudgetDone(Exception):
        pass

    class BudgetTrainer(nnUNetTrainer):
        """nnU-Net's trainer, scored on the test list whenever training time passes one of ``checkpoints``."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")) -> None:  # nnU-Net reads these names back
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
            self.num_val_iterations_per_epoch = VAL_ITERATIONS_PER_EPOCH
            self.trained_s, self.tick = 0.0, None

        def on_epoch_start(self) -> None:
            super().on_epoch_start()
            self.tick = time.perf_counter()

        def on_epoch_end(self) -> None:
            super().on_epoch_end()
            self.trained_s += time.perf_counter() - self.tick
            while checkpoints and self.trained_s >= checkpoints[0]:
                self.score(checkpoints.pop(0) / 60)
            if not checkpoints:
                raise BudgetDone

        def score(self, minutes: float) -> None:
            self.set_deep_supervision_enabled(False)
            self.network.eval()
            predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=self.device,
                                        allow_tqdm=False)
            predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager,
                                            [self.network.state_dict()],
                                            self.dataset_json, "nnUNetTrainer", self.inference_allowed_mirroring_axes)
            scores = []
            for (image, properties), truth in test:
                predicted = predictor.predict_single_npy_array(image, properties)
                scores.append([dice(predicted, truth[0] if truth.ndim == 4 else truth, k) for k in (1, 2)])
            per_label = [round(sum(s[k] for s in scores) / len(scores), 4) for k in (0, 1)]
            iterations = self.current_epoch * ITERATIONS_PER_EPOCH
            emit("peer_msd_hippocampus", {
                "peer": "nnunet-3d_fullres", "nnunetv2": nnunetv2.__version__ if hasattr(nnunetv2, "__version__")
                else "2.8.1", "precision": "fp32", "mark_minutes": round(minutes, 2),
                "train_minutes": round(self.trained_s / 60, 2),
                "train_seconds": round(self.trained_s, 1), "iterations": iterations,
                "seconds_per_iteration": round(self.trained_s / max(1, iterations), 2),
                "patch": list(self.configuration_manager.patch_size), "batch": self.configuration_manager.batch_size,
                "dice": dict(zip(["Anterior", "Posterior"], per_label)), "mean_dice": round(sum(per_label) / 2, 4),
                "test_cases": len(test), "plan_and_preprocess_s": round(plan_seconds, 1),
                "epochs_of_schedule": self.num_epochs})
            self.network.train()
            self.set_deep_supervision_enabled(True)

    plans = json.loads(plans_file.read_text()) | {"continue_training": False}  # as run_training.py passes it
    dataset_json = json.loads((args.work / "preprocessed" / DATASET / "dataset.json").read_text())
    trainer = BudgetTrainer(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    with contextlib.suppress(BudgetDone):
        trainer.run_training()
