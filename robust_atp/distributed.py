"""Data-parallel runs: `torchrun --nproc-per-node N -m robust_atp.run SUITE` or
`accelerate launch --num_processes N -m robust_atp.run SUITE`.

Both launchers set RANK, WORLD_SIZE and LOCAL_RANK. Rank r evaluates the batches b (formed from
the example order alone, as in one process) with b % WORLD_SIZE == r, so any number of processes
computes the same units on the same examples and gets the same answers. Each rank writes its own
store shard, `predictions.rank<r>.sqlite`; rank 0 holds the run lock, merges shards left by an
earlier run before the work starts (so a resume may use another number of processes), and after
the work merges the new shards into `predictions.sqlite` and writes the results and the report.

The process group only carries small control messages (a barrier, a status, engine counters),
so it uses gloo on every device: it needs no GPU of its own and works the same on cpu and cuda.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

SHARD_GLOB = "predictions.rank*.sqlite"
# a rank waits at the final barrier for the slowest rank's whole shard of work
TIMEOUT = _dt.timedelta(days=7)

_started = False
_ever_started = False


class PeerFailed(UserError):
    """Another rank stopped with a user error (and printed it): this rank exits 2 quietly."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def from_env(environ=None) -> Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun and accelerate set them (one process without)."""
    env = os.environ if environ is None else environ
    values = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
        raw = env.get(key)
        try:
            values[key] = default if raw in (None, "") else int(raw)
        except ValueError:
            raise UserError(f"environment: {key}: must be an integer, got {raw!r}") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    local = rank if values["LOCAL_RANK"] is None else values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"environment: RANK={rank}, WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return Ranks(rank, world, local)


def rank_device(device: str, ranks: Ranks) -> str:
    """`cuda` means this rank's GPU (cuda:LOCAL_RANK) in a data-parallel run; an explicit index is kept."""
    return f"cuda:{ranks.local_rank}" if ranks.parallel and device == "cuda" else device


def start(ranks: Ranks) -> None:
    global _started, _ever_started
    if not ranks.parallel or _started:
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world, timeout=TIMEOUT)
    _started = _ever_started = True


def stop() -> None:
    global _started
    if _started:
        import torch.distributed as dist

        dist.destroy_process_group()
        _started = False
_ever_started = False


def reports(error: Exception) -> bool:
    """Whether this process prints a user error: not when another rank stopped (it printed its
    own), and on ranks > 0 not an error met before the process group existed (every rank meets
    the same one there, and rank 0 prints it)."""
    if isinstance(error, PeerFailed):
        return False
    try:
        ranks = from_env()
    except UserError:
        return True
    return ranks.rank == 0 or not ranks.parallel or _ever_started


def combine_stats(parts: list):
    """The engine counters of every rank as one: counts and timings summed, wall seconds the
    slowest rank's."""
    import dataclasses

    out = dataclasses.replace(parts[0])
    for f in dataclasses.fields(out):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "seconds":
            setattr(out, f.name, max(values))
        elif isinstance(values[0], dict):
            setattr(out, f.name, {k: sum(v.get(k, 0) for v in values) for k in values[0]})
        elif isinstance(values[0], (int, float)):
            setattr(out, f.name, sum(values))
    return out


def broadcast(obj, ranks: Ranks):
    """Rank 0's `obj` on every rank (returned unchanged in one process)."""
    if not ranks.parallel:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, ranks: Ranks) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); a barrier for all ranks."""
    if not ranks.parallel:
        return [obj]
    import torch.distributed as dist

    out = [None] * ranks.world if ranks.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


# ----------------------------------------------------------------------------- store shards

def shard_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"predictions.rank{rank}.sqlite"


def shard_paths(run_dir: Path) -> list[Path]:
    """Shards present in a run directory, by rank."""
    def rank_of(p: Path) -> int:
        tag = p.name[len("predictions.rank"):-len(".sqlite")]
        return int(tag) if tag.isdigit() else 1 << 30
    return sorted((p for p in Path(run_dir).glob(SHARD_GLOB) if p.is_file()), key=lambda p: (rank_of(p), p.name))


def remove_store(path: Path) -> None:
    """A store file and its WAL / shared-memory companions."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def merge_shards(store, run_dir: Path, log=None) -> int:
    """Merge every shard in run_dir into `store` (one transaction each) and delete each shard
    once its merge has committed. Returns the rows added."""
    added = 0
    for shard in shard_paths(run_dir):
        n = store.merge(shard)
        remove_store(shard)
        added += n
        if log is not None:
            log(f"merged {n} rows of {shard.name} into {Path(store.path).name}")
    return added
