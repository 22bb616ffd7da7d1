"""A job's mailbox on the cluster (:class:`JobChannel`), apart from :mod:`.ray_runner` so that the actor's worker
process imports Ray and nothing else: an actor is a process of its own, and one that imported torch would add
seconds to every job."""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class JobChannel:
    """One job's mailbox (on the head node) between its task (progress, preview, phase, where it runs) and the
    daemon (cancel, pause, whether the result is still wanted). Plain values only (the
    engine's Progress as a dict), so that its worker process imports neither torch nor the engine."""

    def __init__(self) -> None:
        self.progress: dict[str, Any] | None = None     # the engine's Progress as a dict (no preview)
        self.preview: Any = None
        self.serial = 0              # bumped by every progress report
        self.preview_serial = 0      # bumped by every preview
        self.phase: str | None = None
        self.runs: list[dict[str, Any]] = []     # one per attempt of the task: node id, address, pid, resumed
        self.commands = {"cancel": False, "pause": False, "discard": False}

    def started(self, info: dict[str, Any]) -> int:
        """A new attempt of the task began (``info``: id, address, pid, checkpoint_found); returns its number."""
        self.runs.append({**info, "attempt": len(self.runs) + 1})
        return len(self.runs)

    def report(self, progress: dict[str, Any], preview: Any) -> None:
        self.progress = progress
        self.serial += 1
        if progress.get("resumed") and self.runs:
            self.runs[-1]["resumed"] = True
        if preview is not None:
            self.preview, self.preview_serial = preview, self.preview_serial + 1

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def poll(self, serial: int, preview_serial: int) -> dict[str, Any]:
        """What changed since the daemon's last poll (``serial``, ``preview_serial``: what it has seen)."""
        return {"serial": self.serial, "progress": self.progress if self.serial != serial else None,
                "preview_serial": self.preview_serial,
                "preview": self.preview if self.preview_serial != preview_serial else None,
                "phase": self.phase, "runs": list(self.runs)}

    def command(self, cancel: bool, pause: bool, discard: bool) -> None:
        self.commands = {"cancel": cancel, "pause": pause, "discard": discard}

    def read_commands(self) -> dict[str, bool]:
        return dict(self.commands)
