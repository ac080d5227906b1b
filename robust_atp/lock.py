"""The run-directory lock: one run at a time writes into a run directory.

`run.lock` in the run directory is held with `fcntl.flock` for the whole run, and holds who
holds it (pid, host, start time) so a refused run can say so. The operating system releases a
flock when its process dies, however it dies, so a lock left by a killed run is never in the
way: the next run takes it over and says whose it was. A run that ends normally empties the
file; a non-empty file whose lock is free therefore marks a run that died. (flock is local to
one machine: on a network filesystem shared by several hosts it may not exclude.)
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from .errors import UserError

LOCK = "run.lock"


class RunLock:
    """`with RunLock(run_dir, log): ...` holds the run directory, or raises UserError naming
    the holder. `log` receives one line when a stale lock (its process dead) is taken over."""

    def __init__(self, run_dir: Path, log=None):
        self.path = Path(run_dir) / LOCK
        self.log = log
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the run lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(f"{self.path.parent}: in use by another run ({describe(holder)}); wait for it to end "
                            f"or choose another --out") from None
        previous = _read(fd)
        if previous and self.log is not None:
            self.log(f"{self.path.parent}: taking over the lock of a run that died ({describe(previous)})")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty file: the last run ended normally
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "holder unknown"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
