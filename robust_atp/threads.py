"""How many CPU threads torch uses for a run (`--threads`). Torch's default, one per core, makes
its threads wait on each other when other work shares the cores: on a loaded 2-core machine one
thread is faster than two. The default therefore counts the cores this process may use, takes off
the load already on them (the 1-minute load average), shares the rest among the data-parallel
ranks on the machine and keeps at most 4 (a small model gains little beyond); OMP_NUM_THREADS,
when set, is taken as the user's choice."""
from __future__ import annotations

import contextlib
import os

MAX_DEFAULT = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(cores: int, load: float | None, env: str | None = None, processes: int = 1) -> int:
    """`cores` usable, `load` the 1-minute load average (None: unknown), `env` OMP_NUM_THREADS,
    `processes` the data-parallel ranks sharing this machine's cores.
    -> max(1, min(MAX_DEFAULT, (cores - load) / processes)), or OMP_NUM_THREADS when it is a
    positive integer."""
    if env is not None and env.strip().isdigit() and int(env) > 0:
        return int(env)
    idle = cores if load is None else cores - load
    return max(1, min(MAX_DEFAULT, cores // processes, int(idle / processes + 0.5)))  # half idle counts


def local_ranks() -> int:
    """The data-parallel ranks on this node (torchrun / accelerate set LOCAL_WORLD_SIZE), 1 without."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(local) if local.isdigit() and int(local) > 0 else 1


def machine_default() -> int:
    """`default_threads` for this machine now."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return default_threads(usable_cores(), load, os.environ.get("OMP_NUM_THREADS"), local_ranks())


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n for the block (restored after it), and its inter-op
    threads to n when nothing has started them yet (torch allows that once per process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work has already run
        torch.set_num_interop_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
