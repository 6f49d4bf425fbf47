"""`kill -9` of a running `medseg serve` in the middle of a case: the client gets no half answer, and the next
service cleans up the upload the killed one left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from builders import blob_case, free_port
from medseg.io import Image, write_image

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kill -9 and /proc are exercised on Linux")


def start_service(bundle: Path, temp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "medseg", "serve", str(bundle), "--port", str(port)],
                               env=os.environ | {"TMPDIR": str(temp), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode(errors="replace")[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the service did not come up")


def test_kill_9_mid_case_leaves_no_half_answer_and_the_next_service_cleans_up(tmp_path, bundle_3d):
    temp = tmp_path / "tmp"
    temp.mkdir()
    scan = tmp_path / "big.nii.gz"
    image, _ = blob_case(np.random.default_rng(0), (80, 128, 128))  # many windows of the tiny model: seconds
    write_image(Image.from_array((image[None] * 100 + 300).astype(np.float32), spacing=(1.0, 1.0, 1.5)), scan)
    first, url = start_service(bundle_3d, temp)
    name = httpx.get(url + "/v1/models").json()[0]["name"]
    answers: list[object] = []

    def upload() -> None:
        try:
            answers.append(httpx.post(f"{url}/v1/models/{name}/segment", files={"file": (scan.name, scan.read_bytes())},
                                      timeout=300))
        except httpx.HTTPError as error:
            answers.append(error)

    client = threading.Thread(target=upload)
    client.start()
    (home,) = temp.glob("medseg-serve-*")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((home / "cases").glob("case-*/upload*")):
        time.sleep(0.01)
    assert list((home / "cases").glob("case-*")), "the case never started"
    time.sleep(0.3)  # inside the sliding window
    first.send_signal(signal.SIGKILL)
    first.wait()
    client.join(timeout=60)
    (answer,) = answers
    assert isinstance(answer, httpx.HTTPError), f"a killed service answered {answer!r}"  # no partial mask
    assert home.exists()  # the killed service could not clean up ...
    second, url = start_service(bundle_3d, temp)
    try:
        assert not home.exists()  # ... the next one did, at start-up
        assert httpx.get(url + "/health").status_code == 200
        (own,) = temp.glob("medseg-serve-*")  # only the running service's own folder is left
        assert (own / "pid").read_text().split()[0] == str(second.pid)
    finally:
        second.terminate()
        second.wait(timeout=30)
