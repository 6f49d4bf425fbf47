"""What the process computes on: native bf16, the precision to run a plan in, autocast, and CPU memory tuning.

The lowest layer: it imports nothing from medseg but its error type, and torch only inside the functions that need
it, so that planning (``medseg plan``) can ask whether the CPU computes bf16 without loading torch.

Memory tuning: glibc returns every large free()d block to the kernel (mmap threshold 128 KiB, trim threshold
128 KiB), so each training step maps its activation buffers afresh and page-faults them in again. On the 2-core VM
of ``benchmarks/results.md`` those faults cost more than half of a 3D step in a profile (aten::resize_/empty_like/
as_strided_ at about 50%; a 3D U-Net step fell from about 6 s to 3 s median), and ``benchmarks/predict_precision.py``
timed a sliding window at 5.2 s without the setting against 3.8 s with it. Keeping freed memory in the process is
what PyTorch's own CUDA caching allocator does on GPU; on CPU we ask glibc for it with mallopt.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import TYPE_CHECKING

from medseg.errors import MedsegError

if TYPE_CHECKING:
    import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Ask glibc to keep freed blocks up to ``mmap_threshold`` bytes in the heap; True when applied.

    Idempotent; a no-op (False) off Linux/glibc. Peak memory is unchanged: freed memory is reused, not grown.
    """
    global _tuned  # noqa: PLW0603 - one process-wide setting: glibc's allocator is process-wide too
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok


def release_freed_memory() -> None:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``), keeping what is in use.

    :func:`keep_freed_memory` keeps freed blocks for reuse, which makes the sliding window fast; but a big CT's
    window temporaries, once the window is done, are dead weight under the next stage's large arrays (measured
    on a 512x512x151 CT: peak RSS 2.6 GiB with them kept, see ``Predictor.predict``). A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return


def cpu_has_native_bf16() -> bool:
    """Whether the running CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device_type: str) -> bool:
    """Whether this machine's ``cuda`` or ``cpu`` device computes bf16 in hardware: what planning and running ask.

    Only the ``cuda`` question imports torch.
    """
    if device_type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def device_type_of(name: str) -> str:
    """``cpu`` or ``cuda`` for a ``--device`` choice (``auto``: CUDA when present); refuses clearly what cannot run.

    Imports torch only to ask whether a GPU is there.
    """
    if name not in DEVICE_CHOICES:
        raise MedsegError(f"unknown device {name!r}", "--device", "use auto, cpu or cuda")
    if name == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise MedsegError("no CUDA GPU is available to this process", "--device", "use --device cpu (or auto)")
    return "cpu"


def resolve_device(name: str, index: int | None = None) -> torch.device:
    """The torch device for a ``--device`` choice; ``index`` picks the GPU (a DDP process's ``LOCAL_RANK``)."""
    import torch

    kind = device_type_of(name)
    return torch.device(kind, index) if kind == "cuda" and index is not None else torch.device(kind)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: to a GPU through pinned memory without blocking, so the copy overlaps compute."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def runtime_precision(planned: str, device_type: str = "cpu") -> str:
    """The precision to compute in on this machine: reduced precision only where the device computes it fast.

    A plan records the machine that made it, and a bundle travels: planned on a GPU or an AVX512-BF16 CPU, it may
    train or predict on a CPU without native bf16, where torch emulates it. There a hippocampus training step ran
    2.6x slower in bf16 than in fp32 (`benchmarks/train_throughput.py`) and prediction 3x slower
    (`benchmarks/predict_precision.py`), so such a device computes in fp32. A reduced-precision plan (``bf16`` or
    ``fp16``) on a GPU without bf16 (before Ampere) runs in fp16, which its tensor cores do compute, with a
    gradient scaler in training (:func:`medseg.train.measure.grad_scaler`); on a GPU with bf16, a bf16 plan stays
    bf16 (no scaler needed) and an fp16 plan stays fp16. CPUs never run fp16: only bf16 is fast on them.
    """
    if planned not in ("bf16", "fp16"):
        return "fp32"
    if device_type == "cuda":
        return "bf16" if planned == "bf16" and native_bf16("cuda") else "fp16"
    return "bf16" if native_bf16(device_type) else "fp32"


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 or fp16 autocast on ``device`` for that ``precision``, else a no-op context (fp32)."""
    if precision in ("bf16", "fp16"):
        import torch

        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


class DistributedRanks:
    """This process's rank among those ``torchrun`` started (rank 0 of 1 without torchrun), for work split by input.

    ``torchrun`` tells each process its place through ``RANK``/``WORLD_SIZE``: that is PyTorch's launch contract,
    not medseg configuration. With more than one process, a gloo process group is opened for :meth:`barrier`, and
    each process takes its share of the CPU threads so that the ranks do not oversubscribe the cores.
    """

    def __init__(self) -> None:
        import os

        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._group = False

    def __enter__(self) -> DistributedRanks:
        if self.world_size > 1:
            import os
            from datetime import timedelta

            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
                self._group = True
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world_size))
        return self

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op for one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def __exit__(self, *exc: object) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
