"""A data-parallel run on one machine without a launcher: `python -m robust_atp.run SUITE
--procs N` starts N ranks of itself (`distributed`: the same RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT that torchrun sets), each on its share of the batches with
`--threads` torch threads, and waits for them. Rank 0 prints the progress bar, the summary and
builds the report, as under torchrun; the answers are those of one process (byte-identical
samples.jsonl, tests/test_distributed.py).

Why: on a CPU a small model's forward is many small operations; torch's threads split each of
them and wait on each other between them, so two processes with one thread each answer faster
than one process with two threads (benchmarks/bench_engine.py, the processes row). The default (`--procs auto`) therefore starts one process per thread `--threads` would
give when the model runs on the CPU, `--threads` is not given, the machine has the memory for
that many copies of the weights (at most half of what is available), the weights are local
files (their size is known) and there is more than one batch; otherwise one process, as before.

A rank that fails stops the others (a user error is printed once, by the rank that met it; the
exit status is the first failing rank's); Ctrl-C reaches every rank, which saves what it
finished, and a rerun of the same command resumes.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import UserError

# a rank whose sibling failed gets this long to stop by itself (it is usually at a barrier)
GRACE = 10.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def under_launcher(environ=None) -> bool:
    """Whether this process is already one rank of a launched run (torchrun, accelerate, ours)."""
    env = os.environ if environ is None else environ
    return env.get("WORLD_SIZE") not in (None, "")


def weight_bytes(paths: list[str]) -> int | None:
    """The bytes of the weight files in these local checkpoint directories; None when one is not
    a local directory (a hub id: its size is unknown before it loads)."""
    total = 0
    for p in paths:
        d = Path(p)
        if not d.is_dir():
            return None
        total += sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return total


def available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unreadable: unknown
        return None


def auto_procs(device: str, threads: int, threads_given: bool, weights: int | None, memory: int | None,
               batches: int | None) -> int:
    """`--procs auto`: how many ranks. One per torch thread the run would use, each then with
    one thread, when the model is on the CPU, `--threads` was not given, the weights (bytes) are
    known and that many copies take at most half the available memory; at most one per batch
    (`batches`, None: unknown). Else 1."""
    if device != "cpu" or threads_given or threads < 2 or weights is None or memory is None:
        return 1
    n = min(threads, max(1, memory // 2 // max(weights, 1)))
    if batches is not None:
        n = min(n, batches)
    return max(1, n)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, environ=None) -> dict:
    env = dict(os.environ if environ is None else environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def launch(argv: list[str], procs: int, threads: int) -> int:
    """Run `python -m robust_atp.run *argv --procs 1 --threads threads` as `procs` ranks and wait
    for them. -> the exit status: 0, or the first failing rank's (a rank killed by a signal: 1)."""
    port = free_port()
    cmd = [sys.executable, "-m", "robust_atp.run", *argv, "--procs", "1", "--threads", str(threads)]
    children = [subprocess.Popen(cmd, env=rank_env(r, procs, port)) for r in range(procs)]

    def terminate(signum, frame):  # a SIGTERM to this process reaches the ranks
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    try:
        before = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals stay as they are
        before = None
    try:
        return _wait(children)
    except KeyboardInterrupt:  # the terminal sent SIGINT to every rank too: let them save and stop
        _stop(children, signal.SIGINT)
        return 130
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _wait(children: list[subprocess.Popen]) -> int:
    while True:
        codes = [c.poll() for c in children]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank, code = failed[0]
            _stop(children, signal.SIGTERM)
            if code < 0:
                print(f"error: rank {rank} of {len(children)} was killed by signal {-code}; finished units are saved: "
                      f"run the same command again to continue", file=sys.stderr)
                return 1
            return code
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _stop(children: list[subprocess.Popen], sig) -> None:
    """Give the ranks still running GRACE seconds to end by themselves, then `sig`, then kill."""
    deadline = time.monotonic() + GRACE
    for c in children:
        try:
            c.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for c in children:
        if c.poll() is None:
            c.send_signal(sig)
    for c in children:
        try:
            c.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


def batches_of(limit: int | None, batch_size: int) -> int | None:
    """The run's batch count when the suite limits its examples (else unknown before the data loads)."""
    return None if limit is None else max(1, math.ceil(limit / batch_size))


def parse_procs(value: str) -> int | None:
    """`--procs`: a positive integer, or `auto` (None)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--procs: must be a positive integer or auto, got {value!r}")
    return int(value)
