"""The viewer's worklist: the scans of the ``--examples`` folder, the most uncertain first, so that a clinician
corrects first the cases the model most likely got wrong.

Each scan is segmented once per model (through the service's bounded slots, like any case) and its per-case
uncertainty score kept, keyed by file name, size and modification time, so that a changed file is scored again.
Scans with a saved correction (:class:`~medseg.serve.corrections.CorrectionStore`) go to the end, marked.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from medseg.serve.cases import CaseRunner, Served

Key = tuple[str, str, int, int]  # model, file name, size, mtime_ns


class Worklist:
    def __init__(self) -> None:
        self.scores: dict[Key, float] = {}
        self.lock = threading.Lock()

    async def rank(self, served: Served, runner: CaseRunner, files: dict[str, Path],
                   corrected: set[str]) -> list[dict[str, Any]]:
        """``files`` (name -> path) scored by ``served``, waiting ones by score (highest first), then corrected."""
        entries = []
        for name, path in files.items():
            stat = path.stat()
            key = (served.name, name, stat.st_size, stat.st_mtime_ns)
            with self.lock:
                score = self.scores.get(key)
            if score is None:
                result = await runner.run(served, None, name, uncertainty=True)
                score = float(result.body["uncertainty"]["score"])
                with self.lock:
                    self.scores[key] = score
            entries.append({"name": name, "score": score, "corrected": name in corrected})
        return sorted(entries, key=lambda e: (e["corrected"], -e["score"], e["name"]))
