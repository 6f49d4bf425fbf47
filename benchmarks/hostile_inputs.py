"""Hostile and broken inputs against every reader, `medseg predict` and `medseg serve` (issue 20's targets).

Usage: python benchmarks/hostile_inputs.py [--bundle DIR] [--requests 200] [--clients 8] [--hostile 50]

1. Readers: the crafted files of tests/test_io_limits.py (header-declared sizes, decompression bombs) plus
   generated kinds (every format truncated, cut to its header, bit-flipped, replaced by random bytes; NaN/Inf,
   5D, complex, mislabelled and unsafe files), each read in its own process: the outcome and its peak RSS.
2. `medseg predict` over a folder of all of them plus real scans: good cases written, each bad one listed, no
   temporaries left, exit 1.
3. `medseg serve`: ``--requests`` good uploads from ``--clients`` clients while ``--hostile`` hostile uploads
   (the files above, a 64 MiB chunked body without a token, a wrong token, NaN) are sent in between, each followed
   by ``/health``. Prints one JSON line with every figure.
Without ``--bundle`` a hippocampus bundle is trained for 60 s first (MSD Hippocampus from ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from _common import data_set, emit
from serve_load import free_port, rss_mib, wait_ready

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from builders import write_small_images  # noqa: E402 - the tests' builders of small valid files
from test_io_limits import build_crafted  # noqa: E402 - the tests' crafted files

READ_ONE = """
import json, sys, time
from medseg.errors import MedsegError
from medseg.io import read_image
start = time.perf_counter()
try:
    image = read_image(sys.argv[1])
    outcome = {"outcome": "read", "detail": f"shape {image.array.shape} {image.array.dtype}"}
except MedsegError as error:
    outcome = {"outcome": type(error).__name__, "detail": error.what[:200]}
except BaseException as error:
    outcome = {"outcome": "crash", "detail": f"{type(error).__name__}: {error}"[:300]}
outcome["seconds"] = round(time.perf_counter() - start, 3)
with open("/proc/self/status") as status:  # VmHWM: this process only (ru_maxrss also counts the parent's)
    outcome["peak_rss_mib"] = round(next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024)
print(json.dumps(outcome))
"""


def generated_kinds(folder: Path) -> dict[str, Path]:
    """Damaged copies of a small valid file of each format, and files wrong in content rather than in bytes."""
    folder.mkdir(parents=True)
    rng = random.Random(0)
    kinds: dict[str, Path] = {}
    for fmt, path in write_small_images(folder / "valid").items():
        raw = path.read_bytes()
        flipped = bytearray(raw)
        for i in rng.sample(range(min(len(raw), 512)), 16):
            flipped[i] ^= 0xFF
        for tag, data in (("truncated to half", raw[: len(raw) // 2]), ("header only", raw[: min(len(raw) // 4, 348)]),
                          ("16 header bytes flipped", bytes(flipped)), ("random bytes", rng.randbytes(len(raw)))):
            out = folder / f"{tag.replace(' ', '_')}.{fmt}"
            out.write_bytes(data)
            kinds[f"{fmt} {tag}"] = out
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    volume = np.random.default_rng(1).normal(100, 20, (24, 28, 20)).astype(np.float32)
    for tag, value in (("NaN voxels", np.nan), ("Inf voxels", np.inf)):
        damaged = volume.copy()
        damaged[3:5, 4:6, 2:4] = value
        kinds[f"nii.gz {tag}"] = folder / f"{tag.split()[0].lower()}.nii.gz"
        nib.save(nib.Nifti1Image(damaged, affine), kinds[f"nii.gz {tag}"])
    kinds["nii.gz 5D"] = folder / "five_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 2), np.float32), affine), kinds["nii.gz 5D"])
    kinds["nii.gz complex64"] = folder / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), affine), kinds["nii.gz complex64"])
    kinds["empty nii.gz"] = folder / "empty.nii.gz"
    kinds["empty nii.gz"].write_bytes(b"")
    kinds["PNG bytes named .nii.gz"] = folder / "png_inside.nii.gz"
    shutil.copyfile(folder / "valid" / "small.png", kinds["PNG bytes named .nii.gz"])
    kinds["gzip of text named .nii.gz"] = folder / "text.nii.gz"
    kinds["gzip of text named .nii.gz"].write_bytes(gzip.compress(b"not an image\n" * 100))
    kinds["zip of text files"] = folder / "text.zip"
    with zipfile.ZipFile(kinds["zip of text files"], "w") as archive:
        archive.writestr("notes.txt", "no images here")
    kinds["zip member ../escape.dcm"] = folder / "escape.zip"
    with zipfile.ZipFile(kinds["zip member ../escape.dcm"], "w") as archive:
        archive.writestr("../escape.dcm", (folder / "valid" / "small.dcm").read_bytes()
                         if (folder / "valid" / "small.dcm").exists() else b"DICM")
    return kinds


def read_each(kinds: dict[str, Path]) -> dict[str, dict]:
    results = {}
    for name, path in kinds.items():
        run = subprocess.run([sys.executable, "-c", READ_ONE, str(path)], capture_output=True, text=True,
                             timeout=120, check=False)
        lines = run.stdout.strip().splitlines()
        results[name] = json.loads(lines[-1]) if run.returncode == 0 and lines else {
            "outcome": "crash", "detail": f"exit {run.returncode}: {run.stderr[-300:]}"}
        results[name]["input_bytes"] = path.stat().st_size if path.is_file() else sum(
            p.stat().st_size for p in path.rglob("*") if p.is_file())
    return results


def predict_cohort(bundle: Path, kinds: dict[str, Path], good: list[Path], work: Path) -> dict:
    """`medseg predict` over every hostile file and the good scans in one folder."""
    folder = work / "cohort"
    folder.mkdir()
    for index, path in enumerate(kinds.values()):
        if path.is_file():
            shutil.copyfile(path, folder / f"bad{index:02d}_{path.name}")
    for path in good:
        shutil.copyfile(path, folder / path.name)
    out = work / "predicted"
    start = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).with_name("medseg")), "predict", str(bundle), str(folder), "-o",
                          str(out), "--no-progress"], capture_output=True, text=True, timeout=1800, check=False)
    manifest = json.loads((out / "predictions.json").read_text()) if (out / "predictions.json").exists() else {}
    return {"exit_code": run.returncode, "inputs": len(list(folder.iterdir())),
            "written": len(manifest.get("cases", [])), "good_written": sum(
                1 for c in manifest.get("cases", []) if not c["case"].startswith("bad")),
            "good": len(good), "failed_listed": len(manifest.get("failed", [])),
            "internal_errors": sum(1 for f in manifest.get("failed", []) if f.get("internal")),
            "temporaries_left": [p.name for p in out.iterdir() if p.is_file() and p.name.startswith(".")],
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def chunked(total: int, sent: list[int]):
    block = b"\0" * (1 << 20)
    while sum(sent) < total:
        sent.append(len(block))
        yield block


def hostile_requests(kinds: dict[str, Path], good: Path) -> list[tuple[str, dict]]:
    """(name, httpx request arguments) for the hostile uploads, cycling through the upload-able kinds."""
    uploadable = [(n, p) for n, p in kinds.items() if p.is_file() and "".join(p.suffixes[-2:]).lower() in (
        ".nii", ".nii.gz", ".png", ".tif", ".zip") or p.suffix.lower() in (".nii", ".png", ".tif", ".zip")]
    requests = [(f"upload: {n}", {"files": {"file": (p.name, p.read_bytes())}}) for n, p in uploadable]
    requests.append(("no token, 64 MiB chunked", {"no_token": True, "chunked": 64 << 20}))
    requests.append(("wrong token", {"token": "wrong", "files": {"file": (good.name, good.read_bytes())}}))
    return requests


def serve_under_attack(bundle: Path, payloads: list[tuple[str, bytes]], hostile: list[tuple[str, dict]],
                       args: argparse.Namespace) -> dict:
    token, port = secrets.token_urlsafe(16), free_port()
    url = f"http://127.0.0.1:{port}"
    service = subprocess.Popen(
        [str(Path(sys.executable).with_name("medseg")), "serve", str(bundle), "--port", str(port),
         "--queue", str(2 * args.clients + 2), "--max-upload-mb", "64"],
        env={**os.environ, "MEDSEG_API_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        startup = wait_ready(url, service)
        headers = {"Authorization": f"Bearer {token}"}
        name = httpx.get(url + "/v1/models", headers=headers).json()[0]["name"]
        segment = f"{url}/v1/models/{name}/segment"
        good_client = httpx.Client(headers=headers, timeout=600)

        def good_one(i: int) -> int:
            case, body = payloads[i % len(payloads)]
            return good_client.post(segment, files={"file": (f"{case}.nii.gz", body)}).status_code

        for i in range(2):
            good_one(i)
        after_warmup, memory, stop = rss_mib(service.pid), [], threading.Event()
        outcomes: list[dict] = []

        def sample() -> None:
            while not stop.is_set():
                memory.append(rss_mib(service.pid))
                time.sleep(0.5)

        def attack() -> None:
            for k in range(args.hostile):
                what, spec = hostile[k % len(hostile)]
                sent: list[int] = []
                given = {} if spec.get("no_token") else {"Authorization": f"Bearer {spec.get('token', token)}"}
                try:
                    if "chunked" in spec:
                        response = httpx.post(segment, headers=given | {"Content-Type": "multipart/form-data; "
                                                                        "boundary=x"},
                                              content=chunked(spec["chunked"], sent), timeout=120)
                    else:
                        response = httpx.post(segment, headers=given, files=spec["files"], timeout=600)
                    status = response.status_code
                except httpx.HTTPError as error:
                    status = f"connection: {type(error).__name__}"
                health = httpx.get(url + "/health", timeout=30).status_code
                outcomes.append({"what": what, "status": status, "health": health, "body_bytes_sent": sum(sent)})

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        attacker = threading.Thread(target=attack)
        start = time.perf_counter()
        attacker.start()
        with ThreadPoolExecutor(args.clients) as pool:
            statuses = list(pool.map(good_one, range(args.requests)))
        attacker.join()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        by_status: dict[str, int] = {}
        for outcome in outcomes:
            by_status[str(outcome["status"])] = by_status.get(str(outcome["status"]), 0) + 1
        return {"good_requests": args.requests, "good_errors": sum(1 for s in statuses if s != 200),
                "hostile_requests": len(outcomes), "hostile_statuses": by_status,
                "hostile_5xx": sum(1 for o in outcomes if isinstance(o["status"], int) and o["status"] >= 500
                                   and o["status"] != 503),
                "health_not_200": sum(1 for o in outcomes if o["health"] != 200),
                "chunked_bytes_sent_before_401": max((o["body_bytes_sent"] for o in outcomes
                                                      if o["what"].startswith("no token")), default=None),
                "hostile_detail": {o["what"]: o["status"] for o in outcomes},
                "wall_s": round(wall, 1), "startup_s": round(startup, 1),
                "rss_mib": {"after_warmup": round(after_warmup), "peak": round(max(memory)),
                            "end": round(memory[-1])}}
    finally:
        service.terminate()
        service.wait(timeout=30)


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def train_bundle(work: Path) -> Path:
    data = data_set("msd_hippocampus")
    subprocess.run([str(Path(sys.executable).with_name("medseg")), "train", str(data), "-o", str(work / "run"),
                    "--budget", "60s", "--fold", "0", "--no-progress"], check=True, capture_output=True)
    return work / "run" / "bundle"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hostile", type=int, default=50)
    args = parser.parse_args()
    root = data_set("msd_hippocampus")
    test = json.loads((root / "split.json").read_text())["test"]
    good = [root / "imagesTr" / f"{c}.nii.gz" for c in test]
    with tempfile.TemporaryDirectory(prefix="medseg-hostile-") as tmp:
        work = Path(tmp)
        kinds = {name: path for name, (path, _) in build_crafted(_mk(work / "crafted")).items()}
        crafted_count = len(kinds)
        kinds |= generated_kinds(work / "generated")
        reads = read_each(kinds)
        bundle = args.bundle or train_bundle(work)
        cohort = predict_cohort(bundle, kinds, good[:3], work)
        serve = serve_under_attack(bundle, [(p.name, p.read_bytes()) for p in good], hostile_requests(kinds, good[0]),
                                   args)
    small = [r for r in reads.values() if r["input_bytes"] < 10 * 2**20]
    emit("hostile_inputs", {
        "kinds": len(reads), "crafted": crafted_count, "generated": len(reads) - crafted_count,
        "crashes": [n for n, r in reads.items() if r["outcome"] == "crash"],
        "peak_rss_mib_max_under_10mb": max(r["peak_rss_mib"] for r in small),
        "read_seconds_max": max(r["seconds"] for r in reads.values()),
        "outcomes": {n: [r["outcome"], r["peak_rss_mib"], r["detail"][:120]] for n, r in reads.items()},
        "predict": cohort, "serve": serve,
    })
