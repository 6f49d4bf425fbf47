"""Load on `medseg serve`: N requests of hippocampus volumes from C concurrent clients on loopback.

Usage: python benchmarks/serve_load.py --bundle DIR [--requests 200] [--clients 8] [--backend torch]
Starts the real CLI service in a subprocess (a random token, loopback, a queue deep enough for every client),
sends the MSD Hippocampus test volumes round-robin as multipart uploads, and samples the service's resident
memory twice a second. Prints one JSON line: errors by status, p50/p99 latency, throughput, and memory after
the warm-up, at the peak and at the end (flat memory: end close to after-warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import data_set, emit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not come up")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    root = data_set("msd_hippocampus")
    test = json.loads((root / "split.json").read_text())["test"]
    payloads = [(c, (root / "imagesTr" / f"{c}.nii.gz").read_bytes()) for c in test]
    token, port = secrets.token_urlsafe(16), free_port()
    url = f"http://127.0.0.1:{port}"
    medseg = Path(sys.executable).with_name("medseg")
    service = subprocess.Popen(
        [str(medseg), "serve", str(args.bundle), "--port", str(port), "--backend", args.backend,
         "--queue", str(2 * args.clients)],
        env={**os.environ, "MEDSEG_API_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout's SIGTERM still stops the service below
    try:
        startup = wait_ready(url, service)
        headers = {"Authorization": f"Bearer {token}"}
        name = httpx.get(url + "/v1/models", headers=headers).json()[0]["name"]
        client = httpx.Client(base_url=url, headers=headers, timeout=600)

        def one(i: int) -> tuple[int, float]:
            case, body = payloads[i % len(payloads)]
            start = time.perf_counter()
            response = client.post(f"/v1/models/{name}/segment", files={"file": (f"{case}.nii.gz", body)})
            return response.status_code, time.perf_counter() - start

        for i in range(2):  # warm-up: first-call allocations
            one(i)
        memory: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                memory.append(rss_mib(service.pid))
                time.sleep(0.5)

        after_warmup = rss_mib(service.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        latencies = sorted(s for _, s in results)
        statuses: dict[str, int] = {}
        for status, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        emit("serve_load", {
            "requests": args.requests, "clients": args.clients, "backend": args.backend,
            "statuses": statuses, "errors": sum(n for s, n in statuses.items() if s != "200"),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "throughput_per_s": round(args.requests / wall, 3), "wall_s": round(wall, 1),
            "startup_s": round(startup, 1),
            "rss_mib": {"after_warmup": round(after_warmup), "peak": round(max(memory)), "end": round(memory[-1])},
        })
    finally:
        service.terminate()
        service.wait(timeout=30)
