"""A finished job's result: its layer stack, numbered for the routes, held in memory or spilled to disk.

Big layer stacks are moved out of memory to ``.npy`` files (memory-mapped back on demand) once the
in-memory results exceed the daemon's ``memory_budget`` bytes (:func:`spill_over_budget`); how long a
result is kept is the job store's retention (:class:`~bridge.daemon.store.JobStore`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..document.model import Group, Layer, LayerStack

log = logging.getLogger("stylebridge.daemon")


@dataclass
class JobResult:
    """A finished layer stack with its items numbered in :meth:`LayerStack.walk` order."""

    stack: LayerStack
    items: list[tuple[Layer | Group, int | None]]   # (item, index of its parent group)
    settings: dict[str, Any]
    folder: Path
    in_memory: bool = True
    psd_lock: threading.Lock = field(default_factory=threading.Lock)
    json_cache: dict[str, Any] | None = None

    @classmethod
    def from_stack(cls, stack: LayerStack, settings: dict[str, Any], folder: Path) -> "JobResult":
        items: list[tuple[Layer | Group, int | None]] = []
        index_of: dict[int, int] = {}
        for item, parent in stack.walk():
            index_of[id(item)] = len(items)
            items.append((item, None if parent is None else index_of[id(parent)]))
        return cls(stack, items, settings, folder)

    def nbytes(self) -> int:
        total = 0
        for item, _ in self.items:
            for arr in (getattr(item, "pixels", None), item.mask):
                if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
                    total += arr.nbytes
        return total

    def spill(self) -> None:
        """Move the pixel arrays to ``.npy`` files and memory-map them back: frees RAM, keeps access."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, (item, _) in enumerate(self.items):
            for attr in ("pixels", "mask"):
                arr = getattr(item, attr, None)
                if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
                    path = self.folder / f"{index}.{attr}.npy"
                    np.save(path, arr)
                    setattr(item, attr, np.load(path, mmap_mode="r"))
        self.in_memory = False


def spill_over_budget(held: list[JobResult], budget: int) -> None:
    """Spill ``held`` (in-memory results, oldest first) to disk in that order while they are over ``budget``
    bytes; a disk that refuses stops it with one warning line (the results stay in memory, still served)."""
    total = sum(r.nbytes() for r in held)
    for result in held:
        if total <= budget:
            break
        size = result.nbytes()
        try:
            result.spill()
            total -= size
        except OSError as exc:
            log.warning("could not move a result to disk (%s): %s", result.folder, exc)
            break
