"""What can go wrong with one hot-folder job, and what the user is told to do about it.

Every failure the watcher reports is a :class:`JobError` (the file goes to error/ with its message and
``advice``), :class:`Unavailable` (not the file's fault: it waits in working/ and is retried) or
:class:`Cancelled` (the watcher is stopping: it resumes on the next start). The advice texts live here
once, for the loader, the engines and the watcher.
"""

from __future__ import annotations

ADVICE_IMAGE = ("Open the file in Photoshop and save it again as JPEG, PNG, TIFF or PSD, "
                "then drop it into in/ again.")
ADVICE_SETTINGS = ("Fix the settings named above (preset.json or the file's sidecar .json), "
                   "then move the file from error/ back into in/.")
ADVICE_SIZE = "Scale the image down (or split it), then drop it into in/ again."
ADVICE_WRITE = ("Free some disk space or fix the folder's permissions, then move the file from error/ "
                "back into in/.")
ADVICE_MEMORY = ("Lower \"size\" (or use \"optimizer\": \"adam\") in preset.json or the file's sidecar, "
                 "then move the file from error/ back into in/.")
ADVICE_ENGINE = "This looks like a bug or a resource problem; see the watcher's terminal, then retry."
ADVICE_DAEMON = "Check that `stylebridge serve` is running and reachable, then move the file back into in/."
ADVICE_TOKEN = ("Restart `stylebridge watch` with the daemon's token (--token T, or STYLEBRIDGE_TOKEN in its "
                "environment: the token given to `stylebridge serve --token`), then move the file from error/ back "
                "into in/.")
ADVICE_URL = ("Give `stylebridge watch --daemon` the URL of a running `stylebridge serve` (e.g. http://127.0.0.1:PORT), "
              "then move the file from error/ back into in/.")
ADVICE_SPECIAL = "Only files can be processed: copy the photo itself (not a link, pipe or folder) into in/."


class JobError(Exception):
    """A file cannot be processed: ``str(exc)`` says why, ``advice`` what to do."""

    def __init__(self, message: str, advice: str = ADVICE_IMAGE) -> None:
        super().__init__(message)
        self.advice = advice


class Cancelled(Exception):
    """The watcher is stopping; the job stays in working/ and resumes on the next start."""


class Unavailable(Exception):
    """The daemon cannot be reached, refuses this watcher (token, URL, protocol) or its queue is full: not the
    file's fault, so the job waits and is retried (with ``--once`` it goes to error/ with ``advice``)."""

    def __init__(self, message: str, advice: str = ADVICE_DAEMON) -> None:
        super().__init__(message)
        self.advice = advice
