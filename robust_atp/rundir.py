"""The run directory: created and checked writable, locked, emptied by `--fresh`, its store
opened and claimed for the suite, and the store shards a data-parallel run left merged."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import distributed
from .errors import UserError
from .lock import RunLock
from .results import PLOTS_DIR, REPORT_FILES, RESULTS, SAMPLES, STORE
from .store import RunStore


def open_run(run_dir: Path, fresh: bool, suite, log):
    """Take the run directory: create it, lock it, discard an old run when `fresh`, open and
    claim the store, and merge store shards a data-parallel run left. -> (lock, store)."""
    prepare_dir(run_dir)
    lock = RunLock(run_dir, log).acquire()
    store = None
    try:
        if fresh:
            discard(run_dir)
        store = RunStore(run_dir / STORE)
        store.claim(suite.name, suite.config_hash(), rebind_empty=not distributed.shard_paths(run_dir))
        distributed.merge_shards(store, run_dir, log)
        return lock, store
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        raise


def prepare_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    try:  # a real write: os.access says yes to root on a read-only filesystem
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UserError(f"{run_dir}: the run directory is not writable ({e.strerror})") from None


def discard(run_dir: Path) -> None:
    """--fresh: the old run's store (and any shards), results and report go."""
    for path in [run_dir / STORE] + distributed.shard_paths(run_dir):
        distributed.remove_store(path)
    for name in (RESULTS, SAMPLES, *REPORT_FILES):
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / PLOTS_DIR).is_dir():
        shutil.rmtree(run_dir / PLOTS_DIR)
