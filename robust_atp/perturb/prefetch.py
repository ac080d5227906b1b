"""Corrupted images computed ahead, in one worker process, while the model works.

The engine visits its units in a fixed order (batch, then image condition). `Prefetch` is told
that order up front and keeps the next `ahead` units' corruptions in flight in a worker
process; when the engine reaches a unit it takes that unit's images (waiting only if the worker
is behind). The worker computes each image exactly as the engine would (`CorruptionCache.get`,
same seed, same resolution, reading and writing the same on-disk cache), so the images, their
bytes and their order are unchanged; only where the computation runs moves.

The worker is `python -m robust_atp.perturb.prefetch`, a fresh interpreter that imports only the
corruption code: it never inherits the model, torch's thread pools or the caller's main module
(multiprocessing's spawn would re-run a script without a `__main__` guard). Jobs and results are
pickled over its stdin and stdout; a thread drains stdout so neither side can block the other.
A batch's source images go to the worker once, with that batch's first job. A job that fails
in the worker raises its error when the engine reaches that unit; a worker that dies is
replaced by computing the remaining units in this process (the same images), with a warning.
"""
from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

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
                self.results.put(pickle.load(self.proc.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
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
        try:
            pickle.dump((i, b, sources, cond, seeds, self.resolution, self.root, self.cache.enabled),
                        self.proc.stdin)
            self.proc.stdin.flush()
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
            j, ok, value = msg
            if j != i:
                raise RuntimeError(f"corruption prefetch: expected unit {i}, got {j}")
            self._fill(i + 1)
            if not ok:
                raise value
            return value
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


def _serve(stdin, stdout) -> None:
    """The worker: corrupt each job's images in order and send them back."""
    sources: list = []
    while True:
        try:
            i, b, new_sources, cond, seeds, resolution, root, enabled = pickle.load(stdin)
        except EOFError:
            return
        if new_sources is not None:
            sources = new_sources
        try:
            msg = (i, True, _corrupt(sources, cond, seeds, resolution, root, enabled))
        except Exception as e:
            msg = (i, False, e)
        pickle.dump(msg, stdout)
        stdout.flush()


if __name__ == "__main__":
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the results stream
    _serve(sys.stdin.buffer, results)
