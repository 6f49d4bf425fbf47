"""``--device`` for plan, train and export: the choice is honoured, CUDA is used where present, and a GPU that is
not there is refused before any work. All on the CPU: a GPU's presence is what torch says it is."""

from __future__ import annotations

import json

import pytest
import torch

from builders import make_2d_dataset, make_3d_dataset, run_cli, tiny_plan
from medseg import runtime
from medseg.bundle import load_bundle
from medseg.errors import MedsegError
from medseg.plan import Machine
from medseg.preprocess import load_cached
from medseg.train import TrainConfig, Trainer, TrainRequest, train
from medseg.train.api import prepare_run


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch says a GPU is there: whatever asks ``auto`` would pick it, so a CPU choice must not ask."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_device_names_resolve_to_torch_devices(no_gpu):
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(MedsegError, match="no CUDA GPU.*--device cpu"):
        runtime.resolve_device("cuda")
    with pytest.raises(MedsegError, match="unknown device 'gpu'"):
        runtime.device_type_of("gpu")


def test_auto_and_cuda_take_the_gpu_of_this_process_rank(fake_gpu):
    assert runtime.resolve_device("auto", 1) == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    assert runtime.resolve_device("cpu", 1) == torch.device("cpu")  # the rank's index is a GPU's, not a CPU's


def test_a_cpu_tensor_moves_to_the_cpu_unchanged():
    tensor = torch.arange(6.0)
    assert runtime.to_device(tensor, torch.device("cpu")) is tensor


def test_planning_for_the_cpu_ignores_a_present_gpu(fake_gpu):
    machine = Machine.detect("cpu")
    assert machine.kind == "cpu" and machine.memory_bytes > 0


def test_a_cpu_trainer_keeps_model_and_batches_on_the_cpu_beside_a_gpu(tmp_path, monkeypatch):
    data = make_3d_dataset(tmp_path / "data")
    request = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=tiny_plan(data, tmp_path / "plan.json"),
                           cache_root=tmp_path / "cache", workers=1, progress_bar=False, folds=3)
    plan, splits, cache, _ = prepare_run(request, device="cpu")
    cases = [load_cached(cache, c) for c in splits.folds[0].train]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # from here, "auto" would choose CUDA
    trainer = Trainer(plan, cases, [], tmp_path / "fold", TrainConfig(epochs=1, device="cpu"))
    assert {p.device.type for p in trainer.model.parameters()} == {"cpu"}
    assert torch.isfinite(torch.tensor(trainer.train_step()))
    with pytest.raises(MedsegError, match="unknown device"):
        Trainer(plan, cases, [], tmp_path / "fold2", TrainConfig(epochs=1, device="tpu"))


def test_training_on_a_missing_gpu_is_refused_before_anything_is_written(tmp_path, no_gpu):
    data = make_2d_dataset(tmp_path / "data", cases=3)
    request = TrainRequest(data=data, run_dir=tmp_path / "run", cache_root=tmp_path / "cache", workers=1,
                           progress_bar=False)
    with pytest.raises(MedsegError, match="no CUDA GPU"):
        train(request, TrainConfig(epochs=1, device="cuda"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_cli_plan_train_and_export_take_device(tmp_path, no_gpu):
    data = make_2d_dataset(tmp_path / "data", cases=3)
    assert run_cli("plan", str(data), "-o", str(tmp_path / "plan.json"), "--device", "cpu") == 0
    assert json.loads((tmp_path / "plan.json").read_text())["dim"] == 2
    with pytest.raises(MedsegError, match="no CUDA GPU"):
        run_cli("plan", str(data), "-o", str(tmp_path / "gpu_plan.json"), "--device", "cuda")
    assert not (tmp_path / "gpu_plan.json").exists()
    run = tmp_path / "run"
    assert run_cli("train", str(data), "-o", str(run), "--plan", str(tiny_plan(data, tmp_path / "tiny.json")),
                   "--epochs", "1", "--fold", "none", "--device", "cpu", "--no-progress",
                   "--cache", str(tmp_path / "cache")) == 0
    bundle = run / "bundle"
    assert load_bundle(bundle).folds == ["none"]
    assert run_cli("export", str(bundle), "--onnx", str(tmp_path / "model.onnx"), "--device", "cpu") == 0
    assert (tmp_path / "model.onnx").stat().st_size > 0
    with pytest.raises(MedsegError, match="no CUDA GPU"):
        run_cli("export", str(bundle), "--onnx", str(tmp_path / "gpu.onnx"), "--device", "cuda")
    assert not (tmp_path / "gpu.onnx").exists()


def test_a_compiled_network_trains_the_same_weights_as_eager(tmp_path):
    """``--compile`` changes how the step runs, not what it computes; the bundle's weights keep their names."""
    data = make_2d_dataset(tmp_path / "data", cases=3)
    request = TrainRequest(data=data, run_dir=tmp_path / "run", plan_path=tiny_plan(data, tmp_path / "plan.json"),
                           cache_root=tmp_path / "cache", workers=1, progress_bar=False, folds=3)
    plan, splits, cache, _ = prepare_run(request, device="cpu")
    cases = [load_cached(cache, c) for c in splits.folds[0].train]
    trained = {}
    for compiled in (False, True):
        trainer = Trainer(plan, cases, [], tmp_path / f"fold_{compiled}", TrainConfig(epochs=1, compile=compiled))
        losses = [trainer.train_step() for _ in range(3)]
        trained[compiled] = (losses, trainer.model.state_dict())
    assert trained[True][0] == pytest.approx(trained[False][0], rel=1e-3)
    assert trained[True][1].keys() == trained[False][1].keys()
    for name, value in trained[False][1].items():
        torch.testing.assert_close(trained[True][1][name], value, atol=1e-3, rtol=1e-3, msg=name)


def test_an_fp16_step_scales_the_loss_skips_an_overflow_and_trains():
    """The GPU-without-bf16 path (autocast fp16 + GradScaler), run on the CPU, where torch supports both."""
    from medseg.train.measure import grad_scaler, optimisation_step

    torch.manual_seed(0)
    device = torch.device("cpu")
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    loss = torch.nn.CrossEntropyLoss()
    images = torch.randn(2, 1, 8, 8)
    labels = (images[:, 0] > 0).long()
    scaler = grad_scaler(device, "fp16")
    assert scaler is not None and grad_scaler(device, "bf16") is None and grad_scaler(device, "fp32") is None
    before = [p.detach().clone() for p in network.parameters()]
    first = optimisation_step(network, loss, optimizer, images, labels, device, "fp16", clip=1.0, scaler=scaler)
    assert torch.isfinite(first)
    for _ in range(20):  # the first scale (2^16) may overflow fp16 activations' gradients: skipped, scale halved
        if any(not torch.equal(a, b) for a, b in zip(before, network.parameters())):
            break
        optimisation_step(network, loss, optimizer, images, labels, device, "fp16", clip=1.0, scaler=scaler)
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))  # a step was applied
    # an overflowing loss: the scaler skips the update and halves its scale, the weights stay as they are
    scale, kept = scaler.get_scale(), [p.detach().clone() for p in network.parameters()]
    def overflow(output, target):
        return loss(output, target) * float("inf")
    optimisation_step(network, overflow, optimizer, images, labels, device, "fp16", clip=None, scaler=scaler)
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(kept, network.parameters()))
    for _ in range(30):
        last = optimisation_step(network, loss, optimizer, images, labels, device, "fp16", clip=1.0, scaler=scaler)
    assert float(last) < float(first)
