"""Corrupted images computed ahead, in one worker process, while the model works.

The engine visits its units in a fixed order (batch, then image condition). `Prefetch` is told
that order up front and keeps the next `ahead` units' corruptions in flight in a worker
process; when the engine reaches a unit it takes that unit's images (waiting only if the worker
is behind). The worker computes each image exactly as the engine would (`CorruptionCache.get`,
same seed, same resolution, reading and writing the same on-disk cache), so the images, their
bytes and their order are unchanged; only where the computation runs moves.

The worker is `python -m robust_atp.perturb.prefetch`, a fresh interpreter that imports only the
corruption code: it never inherits the model, torch's thread pools or the caller's main module
(multiprocessing's spawn would re-run a script without a `__main__` guard). Jobs and results go
over its stdin and stdout as plain data, never pickles: a length-prefixed JSON header and the
images' raw RGB bytes (`_send_frame` / `_read_frame`; exact, since the corruption code reads a
source as RGB first); a thread drains stdout so neither side can block the other. A batch's
source images go to the worker once, with that batch's first job. A job that fails in the
worker is computed again in this process when the engine reaches it, so it raises here the
error it raised there; a worker that dies is replaced by computing the remaining units in this
process (the same images), with a warning.
"""
from __future__ import annotations

import json
import os
import queue
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

from PIL import Image

from ..data.images import to_rgb

_STOPPED = object()  # the reader thread's last message: the worker's stdout closed


class Prefetch:
    """jobs: the engine's corrupted units in the order it visits them, as (batch index, image
    condition, per-example seeds); load(b): batch b's source images; cache: the run's
    `CorruptionCache`. `take(i)` returns job i's (images, whether each came from the cache) and
    must be called for i = 0, 1, 2, ... in order."""

    def __init__(self, jobs: list[tuple], load: Callable[[int], list], cache, resolution, ahead: int = 4):
        self.jobs, self.load, self.cache, self.resolution = jobs, load, cache, resolution
        self.ahead = max(1, ahead)
        self.root = str(cache.root)
        self.sent = 0  # jobs handed to the worker
        self.sent_batch = None  # the batch whose sources the worker holds
        self.failed: dict[int, BaseException] = {}  # job -> its sources' load error, raised at take
        self.results: queue.Queue = queue.Queue()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "NUMBA_NUM_THREADS": "1",  # one core's worth: the model's threads keep theirs
               # this package importable as the parent imports it (an editable install or a path)
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "robust_atp.perturb.prefetch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.alive = True
        self._fill(0)

    def _read(self) -> None:
        try:
            while True:
                self.results.put(_read_frame(self.proc.stdout))
        except (EOFError, OSError, ValueError):
            self.results.put(_STOPPED)

    def _send(self, i: int) -> None:
        b, cond, seeds = self.jobs[i]
        sources = None
        if b != self.sent_batch:
            try:
                sources = self.load(b)
            except Exception as e:  # raised when the engine reaches this unit, as without prefetching
                self.failed[i] = e
                return
            self.sent_batch = b
        job = {"job": i, "corruption": cond.corruption, "severity": cond.severity, "seeds": list(seeds),
               "resolution": self.resolution, "root": self.root, "enabled": self.cache.enabled,
               "sources": sources is not None}
        try:
            _send_frame(self.proc.stdin, job, [] if sources is None else [to_rgb(im) for im in sources])
        except OSError:  # the worker is gone: take() computes here
            self.alive = False

    def _fill(self, upto: int) -> None:
        while self.alive and self.sent < min(len(self.jobs), upto + self.ahead):
            self._send(self.sent)
            self.sent += 1

    def take(self, i: int) -> tuple[list, list[bool]]:
        if i in self.failed:
            raise self.failed.pop(i)
        while self.alive:
            msg = self.results.get()
            if msg is _STOPPED:
                self.alive = False
                warnings.warn(f"corruption prefetch: the worker stopped (exit {self.proc.wait()}); "
                              "computing the remaining corruptions in this process")
                break
            head, images = msg
            if head["job"] != i:
                raise RuntimeError(f"corruption prefetch: expected unit {i}, got {head['job']}")
            self._fill(i + 1)
            if "error" in head:  # computed again here, where it raises its own error
                break
            return images, head["hits"]
        return self._here(i)

    def _here(self, i: int) -> tuple[list, list[bool]]:
        b, cond, seeds = self.jobs[i]
        return _corrupt(self.load(b), cond, seeds, self.resolution, self.root, self.cache.enabled)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)


def _corrupt(sources: list, cond, seeds: list[int], resolution, root: str, enabled: bool):
    """The unit's corrupted images through the cache at root, and which came from it."""
    from .cache import CorruptionCache

    cache = CorruptionCache(Path(root), enabled=enabled)
    out, hits = [], []
    for img, seed in zip(sources, seeds):
        im, hit = cache.get(img, cond, seed, resolution)
        out.append(im)
        hits.append(hit)
    return out, hits


def _send_frame(f, header: dict, images: list) -> None:
    """One message: the header's JSON length (4 bytes, little-endian), the header with the
    images' sizes, then each RGB image's raw bytes."""
    head = json.dumps({**header, "sizes": [list(im.size) for im in images]}).encode()
    f.write(struct.pack("<I", len(head)) + head)
    for im in images:
        f.write(im.tobytes())
    f.flush()


def _read_frame(f) -> tuple[dict, list]:
    header = json.loads(_exactly(f, struct.unpack("<I", _exactly(f, 4))[0]))
    images = [Image.frombytes("RGB", (w, h), _exactly(f, w * h * 3)) for w, h in header.pop("sizes")]
    return header, images


def _exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _serve(stdin, stdout) -> None:
    """The worker: corrupt each job's images in order and send them back."""
    from .image import ImageCondition

    sources: list = []
    while True:
        try:
            job, new_sources = _read_frame(stdin)
        except EOFError:
            return
        if job["sources"]:
            sources = new_sources
        try:
            cond = ImageCondition(job["corruption"], job["severity"])
            images, hits = _corrupt(sources, cond, job["seeds"], job["resolution"], job["root"], job["enabled"])
            _send_frame(stdout, {"job": job["job"], "hits": hits}, images)
        except Exception as e:  # the engine's process computes this unit again and raises it there
            _send_frame(stdout, {"job": job["job"], "error": f"{type(e).__name__}: {e}"}, [])


if __name__ == "__main__":
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the results stream
    _serve(sys.stdin.buffer, results)
