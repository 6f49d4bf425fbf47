"""Training end to end on tiny generated data: bundles, resume, budgets, bad input, DDP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import make_2d_dataset, make_3d_dataset, run_ranks, tiny_plan
from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.plan import AugmentConfig
from medseg.preprocess import load_cached
from medseg.train import TrainConfig, TrainRequest, train
from medseg.train.api import prepare_run
from medseg.train.hooks import Hook
from medseg.train.loop import WARMUP_STEPS, Trainer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def request(tmp_path: Path, data: Path, **kw) -> TrainRequest:
    return TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=tiny_plan(data, tmp_path / "plan.json"),
                        cache_root=tmp_path / "cache", workers=1, progress_bar=False, folds=3, **kw)


@pytest.mark.parametrize("maker", [make_3d_dataset, make_2d_dataset])
def test_tiny_training_writes_a_loadable_bundle(tmp_path, maker):
    data = maker(tmp_path / "data")
    bundle = train(request(tmp_path, data), TrainConfig(epochs=2, steps_per_epoch=3, validations=1))
    loaded = load_bundle(bundle)
    assert loaded.folds == ["0"]
    fold = loaded.metrics["folds"]["0"]
    assert fold["steps"] == 6 and fold["cases"] == 2 and fold["final"] is True
    assert set(fold["val_dice"]) == {str(v) for v in loaded.plan.foreground_labels}
    assert all(0.0 <= d <= 1.0 or np.isnan(d) for d in fold["val_dice"].values())
    model = loaded.load_models()[0]
    x = torch.zeros(1, loaded.plan.channels, *loaded.plan.patch_size)
    assert model(x).shape == (1, loaded.plan.num_classes, *loaded.plan.patch_size)
    card = (bundle / "model_card.md").read_text()
    assert "Intended use" in card and loaded.plan.dataset_name in card
    run = bundle.parent
    assert (run / "fold_0" / "curve.png").stat().st_size > 0
    events = [json.loads(line)["event"] for line in (run / "fold_0" / "log.jsonl").read_text().splitlines()]
    assert "validation" in events
    assert not list(bundle.glob("*.pt")) and not list(bundle.glob("*.pkl"))  # no pickles in the bundle
    # Measured on the held-out fold after training: post-processing steps and whether mirror TTA pays.
    post = json.loads((bundle / "postprocess.json").read_text())
    assert post["format"] == "medseg-postprocess" and post["decisions"]
    summary = json.loads((run_dir := bundle.parent / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["cases"] == 2
    assert set(summary["per_class"]) == {loaded.plan.labels[v] for v in loaded.plan.foreground_labels}
    assert (run_dir.parent / "metrics.csv").read_text().startswith("case,prediction,reference,label")
    check = loaded.metrics["inference"]["tta_check"]["0"]
    assert check["cases"] == 2 and check["tta"] == (check["dice_tta"] > check["dice_plain"] + 0.002)


def test_one_case_trains_without_validation_and_two_cases_make_two_folds(tmp_path):
    one = make_3d_dataset(tmp_path / "one", cases=1)
    bundle = train(request(tmp_path / "a", one, fold="none"), TrainConfig(epochs=1, steps_per_epoch=2))
    fold = load_bundle(bundle).metrics["folds"]["none"]
    assert fold["steps"] == 2 and "val_dice" not in fold  # trained on the one case, validated on none
    assert "inference" not in load_bundle(bundle).metrics  # nothing held out to measure TTA on
    # nor post-processing: it follows the training masks (each generated class is one blob)
    post = json.loads((bundle / "postprocess.json").read_text())
    assert post["decisions"] and {d["basis"] for d in post["decisions"]} == {"training masks"}
    assert all(post["classes"][str(v)]["keep_largest"] for v in load_bundle(bundle).plan.foreground_labels)
    # the default fold 0 of a 1-case set is that same single fold
    assert load_bundle(train(request(tmp_path / "b", one), TrainConfig(epochs=1, steps_per_epoch=2))).folds == ["0"]

    two = make_3d_dataset(tmp_path / "two", cases=2)
    bundle = train(request(tmp_path / "c", two, fold="all"), TrainConfig(epochs=1, steps_per_epoch=2))
    splits = json.loads((bundle.parent / "splits.json").read_text())
    assert splits["folds"] == 2 and splits["notes"] == [
        "2 training case(s) cannot make 3 folds: made 2 instead (one case validates each)"]
    assert sorted(load_bundle(bundle).metrics["folds"]) == ["0", "1"]


def test_a_plan_that_mirrors_no_axis_finishes_its_run_with_tta_off(tmp_path):
    """Left/right organs make the plan mirror nothing; the TTA check then has nothing to measure (was a KeyError)."""
    data = make_3d_dataset(tmp_path / "data")
    plan = tiny_plan(data, tmp_path / "plan.json", augment=AugmentConfig(mirror_axes=()))
    run = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=plan, cache_root=tmp_path / "cache",
                       workers=1, progress_bar=False, folds=3)
    bundle = train(run, TrainConfig(epochs=1, steps_per_epoch=2, validations=1))
    inference = load_bundle(bundle).metrics["inference"]
    assert inference["tta"] is False and inference["tta_check"]["0"] == {"cases": 2, "tta": False, "dice_empty": "one"}
    assert (bundle / "model_card.md").exists()


def test_training_learns_the_2d_blobs(tmp_path):
    """Enough steps on an easy task must beat chance clearly: the loop really optimises."""
    data = make_2d_dataset(tmp_path / "data", cases=6)
    plan = tiny_plan(data, tmp_path / "plan.json", features=[8, 16, 32], learning_rate=0.02, optimizer="sgd")
    run = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=plan, cache_root=tmp_path / "cache",
                       workers=1, progress_bar=False, folds=3)
    bundle = train(run, TrainConfig(epochs=20, steps_per_epoch=5, validations=1))
    dice = load_bundle(bundle).metrics["folds"]["0"]["val_dice"]
    assert dice["1"] > 0.7, dice


class Crash(Hook):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step(self, trainer, record):
        if record["step"] == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_continues_from_the_saved_step_exactly(tmp_path):
    data = make_2d_dataset(tmp_path / "data")
    plan, splits, cache, _ = prepare_run(request(tmp_path, data))
    train_cases = [load_cached(cache, c) for c in splits.folds[0].train]
    config = TrainConfig(epochs=2, steps_per_epoch=4, checkpoint_every_s=0.0, seed=3)

    reference = Trainer(plan, train_cases, [], tmp_path / "reference", config)
    reference.run()

    crashed = Trainer(plan, train_cases, [], tmp_path / "resumed", config, hooks=[Crash(at_step=5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.run()
    resumed = Trainer(plan, train_cases, [], tmp_path / "resumed", TrainConfig(**{**config.__dict__, "resume": True}))
    resumed.load_checkpoint()
    assert resumed.state.step == 4  # the checkpoint written after step 4; step 5 crashed before saving
    resumed.config.resume = False  # already loaded
    resumed.run()
    assert resumed.state.step == 8
    for (name, a), (_, b) in zip(reference.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_foreign_checkpoint_is_refused_without_unpickling(tmp_path):
    data = make_3d_dataset(tmp_path / "data")
    plan, splits, cache, _ = prepare_run(request(tmp_path, data))
    cases = [load_cached(cache, c) for c in splits.folds[0].train]
    folder = tmp_path / "bad"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, folder / "last_state.pt")
    (folder / "last.safetensors").write_bytes(b"not safetensors")
    trainer = Trainer(plan, cases, [], folder, TrainConfig(epochs=1, resume=True))
    with pytest.raises(MedsegError, match="safetensors"):
        trainer.run()
    from medseg.train.checkpoint import save_weights

    save_weights(trainer.model, folder / "last.safetensors")
    with pytest.raises(MedsegError, match="not a medseg training state"):
        trainer.run()
    assert not (tmp_path / "pwned").exists()


def test_budget_too_small_is_refused_with_the_minimum(tmp_path):
    data = make_2d_dataset(tmp_path / "data", cases=9)
    with pytest.raises(MedsegError, match=r"give at least --budget \d+s"):
        train(request(tmp_path, data), TrainConfig(budget_s=0.01, steps_per_epoch=50))


def test_data_set_failing_check_is_refused_with_its_problems(tmp_path):
    data = make_3d_dataset(tmp_path / "data")
    (data / "labelsTr" / "blob_000.nii.gz").unlink()
    with pytest.raises(MedsegError, match="fails `medseg check` with 1 problem.*blob_000_0000.nii.gz: has no mask"):
        train(request(tmp_path, data), TrainConfig(epochs=1))


class Recorder(Hook):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_step(self, trainer, record):
        self.steps.append(record)

    def on_end(self, trainer):
        self.stop_progress = trainer._step_progress  # the progress the loop's last stop check saw


def test_budget_mode_stops_on_time_and_anneals(tmp_path):
    data = make_2d_dataset(tmp_path / "data")
    plan, splits, cache, _ = prepare_run(request(tmp_path, data))
    fold = splits.folds[0]
    recorder = Recorder()
    cases = {name: [load_cached(cache, c) for c in getattr(fold, name)] for name in ("train", "val")}
    trainer = Trainer(plan, cases["train"], cases["val"], tmp_path / "fold",
                      TrainConfig(budget_s=6.0, steps_per_epoch=1, validations=2), hooks=[recorder])
    metrics = trainer.run()
    # Wall-clock progress (validation time and reserve included) decides the stop, not a step count: the loop
    # stops at the first check after the timed warm-up that finds the budget used, however loaded the machine is.
    # The last step itself may log less than 1 when a validation after it used the rest of the budget.
    progress = [s["progress"] for s in recorder.steps]
    assert recorder.stop_progress >= 1.0 and all(p < 1.0 for p in progress[WARMUP_STEPS:-1]), progress
    assert progress == sorted(progress) and metrics["steps"] == len(progress) > WARMUP_STEPS - 1
    lrs = [s["lr"] for s in recorder.steps]
    assert lrs == sorted(lrs, reverse=True)  # poly schedule over wall-clock progress


@pytest.mark.skipif(sys.platform != "linux", reason="DDP with gloo is exercised on Linux")
@pytest.mark.timeout(1200)  # two torch imports and two trainings share two cores: minutes on a loaded CI machine
def test_ddp_two_processes_write_one_bundle(tmp_path):
    """Two ranks of ``python -m medseg train`` with the environment torchrun gives them (env:// rendezvous, gloo)."""
    data = make_2d_dataset(tmp_path / "data")
    plan = tiny_plan(data, tmp_path / "plan.json")
    cmd = [sys.executable, "-m", "medseg", "train", str(data), "-o", str(tmp_path / "run"), "--plan", str(plan),
           "--epochs", "2", "--cache", str(tmp_path / "cache"), "--no-progress", "--folds", "3", "--workers", "1"]
    outputs = run_ranks(cmd, timeout=900)
    loaded = load_bundle(tmp_path / "run" / "bundle")
    fold = loaded.metrics["folds"]["0"]
    assert loaded.folds == ["0"] and fold["steps"] > 0 and fold["processes"] == 2  # the ranks really joined
    assert [out.count("bundle written to") for out, _ in outputs] == [1, 0]  # only rank 0 reports and writes


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_plan_trains_in_fp32_on_a_cpu_without_native_bf16(tmp_path, monkeypatch, native):
    """The plan may come from another machine; emulated bf16 ran 2.6x slower than fp32 on a CPU without it."""
    from medseg import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    data = make_3d_dataset(tmp_path / "data")
    plan_path = tiny_plan(data, tmp_path / "plan.json", precision="bf16")
    run = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=plan_path, cache_root=tmp_path / "cache",
                       workers=1, progress_bar=False, folds=3)
    loaded = load_bundle(train(run, TrainConfig(epochs=1, steps_per_epoch=2, validations=1)))
    assert loaded.plan.precision == "bf16"  # the plan is kept as given ...
    assert loaded.metrics["folds"]["0"]["precision"] == ("bf16" if native else "fp32")  # ... compute follows the CPU


def test_validation_dice_in_metrics_json_agrees_with_the_fold_summary(tmp_path, monkeypatch):
    """One Dice convention everywhere: a class absent from both masks of a case scores 1 in the bundle's
    metrics.json (training validation) and in the fold's summary.json (full evaluation) alike."""
    from medseg.io import read_image, write_image

    data = make_3d_dataset(tmp_path / "data")
    for path in sorted((data / "labelsTr").iterdir())[1:]:  # class 2 only in the first case
        label = read_image(path)
        write_image(label.with_array(np.where(label.array == 2, 0, label.array)), path)

    def background(model, data, patch_size, **kwargs):  # the validation predicts no foreground at all
        logits = torch.zeros(3, *data.shape[1:])
        logits[0] = 1.0
        return logits

    monkeypatch.setattr("medseg.train.loop.predict_logits", background)
    bundle = train(request(tmp_path, data), TrainConfig(epochs=1, steps_per_epoch=2, validations=1))
    fold = load_bundle(bundle).metrics["folds"]["0"]
    summary = json.loads((bundle.parent / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["empty"]["bright"]["both_empty"] >= 1  # the case this test is about
    assert fold["dice_empty"] == summary["dice_empty"] == "one"
    assert fold["val_dice"] == {"1": 0.0, "2": pytest.approx(summary["per_class"]["bright"]["dice"]["mean"])}
    assert fold["val_dice"]["2"] > 0 and fold["val_dice_mean"] == pytest.approx(summary["mean_dice"])
    assert summary["per_class"]["small"]["dice"]["mean"] == 0.0
    header = (bundle.parent / "fold_0" / "validation.csv").read_text().splitlines()[0].split(",")
    assert "dice_empty" in header
    assert json.loads((bundle / "postprocess.json").read_text())["dice_empty"] == "one"
    assert load_bundle(bundle).metrics["inference"]["tta_check"]["0"]["dice_empty"] == "one"
