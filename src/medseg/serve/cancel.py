"""How a case is stopped. The worker segmenting it asks its :class:`Stop` between batches of sliding windows
(``Predictor.predict(..., should_stop=stop)``), which answers True once the request has given up (it timed out,
its client went away, the service is shutting down) or the case's own time limit, counted from the start of the
work, has passed; the prediction then ends with :class:`medseg.infer.sliding.Cancelled`, and the case frees its
slot and deletes its folder. :func:`wait_case` is the request's side: the wait for the case's result, bounded in
time and listening for the client leaving.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

POLL_S = 0.25  # how often a waiting request asks whether its client is still there


class ClientGone(Exception):
    """The client closed the connection while its case was running."""


class Stop:
    """A case's stop signal: set by hand (:meth:`set`) or past a deadline (:meth:`begin`)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.deadline: float | None = None  # time.monotonic()

    def begin(self, timeout_s: float | None) -> None:
        """The work starts now; it may run ``timeout_s`` seconds (None: no limit)."""
        if timeout_s is not None:
            self.deadline = time.monotonic() + timeout_s

    def set(self) -> None:
        self.event.set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def __call__(self) -> bool:
        return self.event.is_set() or self.expired()


@dataclass(eq=False)
class Submitted:
    """A case handed to a worker: its future and its stop signal."""

    future: Future
    stop: Stop = field(default_factory=Stop)

    def cancel(self) -> None:
        """Stop the case: dropped from the queue if it has not started, else stopped at its next check."""
        self.stop.set()
        self.future.cancel()


async def wait_case(future: Future, timeout_s: float, disconnected: Callable[[], Awaitable[bool]] | None = None,
                    poll_s: float = POLL_S) -> Any:
    """The case's result; ``asyncio.TimeoutError`` after ``timeout_s`` seconds, :class:`ClientGone` when
    ``disconnected()`` (asked every ``poll_s`` seconds) says the client left. The caller stops the case."""
    waiting = asyncio.wrap_future(future)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            done, _ = await asyncio.wait({waiting}, timeout=min(remaining, poll_s))
            if done:
                return waiting.result()
            if disconnected is not None and await disconnected():
                raise ClientGone
    finally:
        if not waiting.done():
            waiting.cancel()
