"""The daemon client the package uses (``stylebridge status``, the hot folder's ``--daemon URL`` mode,
the daemon's tests and benchmarks).

The protocol itself (errors, multipart, requests, error texts, waiting) lives once, in the standard-
library-only :mod:`bridge.protocol`, which the GIMP plug-in runs as its ``sb_client.py``.
This module adds only what needs the package: :meth:`DaemonClient.download_psd` writes atomically.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from ..outputs import atomic_write
from ..protocol import (DEFAULT_URL, TERMINAL, URL_ENV, Client, ClientError, DaemonError,
                              DaemonUnreachable, JobCancelled, JobFailed, default_url, encode_multipart,
                              unreachable_message)

__all__ = ["DEFAULT_URL", "TERMINAL", "URL_ENV", "ClientError", "DaemonClient", "DaemonError",
           "DaemonUnreachable", "JobCancelled", "JobFailed", "default_url", "encode_multipart",
           "unreachable_message"]


class DaemonClient(Client):
    """One daemon at ``url`` (default ``$STYLEBRIDGE_URL``); ``token`` defaults to ``$STYLEBRIDGE_TOKEN``."""

    def download_psd(self, job_id: str, path: str | os.PathLike) -> Path:
        """Fetch the PSD and write it atomically to ``path`` (pass a free name: it is replaced)."""
        data = self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/result.psd")
        atomic_write(path, data)
        return Path(path)
