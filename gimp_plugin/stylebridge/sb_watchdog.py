"""The plug-in's watchdog: a separate process that cancels the job when the plug-in dies.

GIMP kills a plug-in whose progress the user cancels, so the plug-in itself cannot cancel its job. Each run
starts this file as its own process with a pipe on its standard input::

    python3 sb_watchdog.py cancel-on-eof JOB_ID   # URL and token from STYLEBRIDGE_URL / STYLEBRIDGE_TOKEN
    python3 sb_watchdog.py health [URL]

``cancel-on-eof`` reads standard input until end of file; unless it read ``done`` first, it cancels the job.
Standard library and the protocol client (``sb_client.py`` beside it) only: it runs with GIMP's Python.
"""

import json
import sys
import time

from sb_client import Client, ClientError, DaemonError, DaemonUnreachable


def cancel_on_eof(job_id: str, stream=None) -> int:
    """Block until ``stream`` closes; cancel the job unless ``done`` was written first."""
    stream = stream if stream is not None else sys.stdin.buffer
    seen = b""
    try:
        for chunk in iter(lambda: stream.read(64), b""):
            seen += chunk
            if b"done" in seen:
                return 0
    except OSError:
        pass
    client = Client(timeout=10.0)
    for _ in range(3):
        try:
            client.cancel(job_id)
            return 0
        except DaemonError:
            return 0            # already finished or gone
        except DaemonUnreachable:
            time.sleep(1.0)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "cancel-on-eof":
        return cancel_on_eof(argv[1])
    if len(argv) >= 1 and argv[0] == "health":
        try:
            print(json.dumps(Client(argv[1] if len(argv) > 1 else None).health(timeout=5.0)))
            return 0
        except ClientError as exc:
            print(exc, file=sys.stderr)
            return 1
    print("usage: sb_watchdog.py cancel-on-eof JOB_ID | health [URL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
