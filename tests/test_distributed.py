"""Data-parallel runs, shard merging, and runs killed at random points then resumed.

The end-to-end tests run tests/suites/kill_slice.yaml (the shipped demo model; 8
questions, 7 conditions, 3 methods, batches of 2) through `torch.distributed.run` and through
SIGKILLs, and compare every prediction with an uninterrupted single-process run.
"""
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from robust_atp import distributed
from robust_atp.engine import EngineStats
from robust_atp.errors import UserError
from robust_atp.run import main
from robust_atp.store import Prediction, RunStore

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "suites" / "kill_slice.yaml"
CONDITIONS, METHODS = 7, 3


def args(out, limit):
    return [str(SUITE), "--out", str(out), "--limit", str(limit), "--batch-size", "2", "--no-report",
            "--no-progress"]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out, limit, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), "-m", "robust_atp.run"] + args(out, limit)


def count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def rows_of(run):
    """Every answer of a run (samples.jsonl without the per-row cost measurements)."""
    keep = ("example_id", "condition", "method", "prediction", "score", "kept_tokens", "kept_indices")
    return [{k: s[k] for k in keep} for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines())]


def result_rows(run):
    """results.json rows without measured times (which differ between any two runs)."""
    rows = json.loads((run / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if "latency" not in k and "time" not in k} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run of 8 questions (4 batches x 7 conditions = 28 units)."""
    run = tmp_path_factory.mktemp("reference") / "r8"
    assert main(args(run, 8)) == 0
    return run


# ----------------------------------------------------------------------------- units

def test_ranks_from_the_environment():
    assert distributed.from_env({}) == distributed.Ranks(0, 1, 0)
    assert distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == distributed.Ranks(3, 4, 1)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(UserError, match="environment"):
            distributed.from_env(bad)
    r = distributed.Ranks(1, 2, 1)
    assert distributed.rank_device("cuda", r) == "cuda:1"
    assert distributed.rank_device("cuda:0", r) == "cuda:0" and distributed.rank_device("cpu", r) == "cpu"
    assert distributed.rank_device("cuda", distributed.Ranks()) == "cuda"


def test_engine_counters_of_every_rank_combine():
    a = EngineStats(units_total=4, units_run=3, generations=10, seconds=2.0, timings={"load": 1.0, "vision": 2.0})
    b = EngineStats(units_total=3, units_run=1, generations=4, seconds=5.0, timings={"load": 0.5, "vision": 1.0})
    c = distributed.combine_stats([a, b])
    assert (c.units_total, c.units_run, c.generations, c.seconds) == (7, 4, 14, 5.0)
    assert c.timings == {"load": 1.5, "vision": 3.0} and a.units_total == 4


def pred(ex, answer="red", score=1.0, extra=None):
    return Prediction(ex, "clean", "full", answer, score, {"exact_match": score}, 144, None, extra or {})


def test_shards_merge_once_without_doubling(tmp_path):
    main_store = RunStore(tmp_path / "predictions.sqlite")
    main_store.claim("s", "h")
    main_store.put([pred("a")])
    for rank, exs in ((0, ["a", "b"]), (1, ["c"])):  # "a" is in the store and in shard 0: same answer
        shard = RunStore(distributed.shard_path(tmp_path, rank))
        shard.claim("s", "h")
        shard.put([pred(e, extra={"latency": rank}) for e in exs])  # extra (timings) is not compared
        shard.close()
    assert distributed.merge_shards(main_store, tmp_path) == 2
    assert distributed.shard_paths(tmp_path) == [] and sorted(main_store.done()) == [
        (e, "clean", "full") for e in "abc"]
    assert distributed.merge_shards(main_store, tmp_path) == 0


def test_a_shard_that_disagrees_is_refused_and_nothing_merged(tmp_path):
    main_store = RunStore(tmp_path / "predictions.sqlite")
    main_store.claim("s", "h")
    main_store.put([pred("a")])
    shard = RunStore(distributed.shard_path(tmp_path, 0))
    shard.claim("s", "h")
    shard.put([pred("b"), pred("a", answer="blue", score=0.0)])
    shard.close()
    with pytest.raises(UserError, match="answers 'blue'.*computed differently"):
        distributed.merge_shards(main_store, tmp_path)
    assert main_store.count() == 1 and distributed.shard_paths(tmp_path)  # the shard stays
    other = RunStore(distributed.shard_path(tmp_path, 0))
    other.conn.execute("UPDATE meta SET value = 'other' WHERE key = 'config_hash'")
    other.conn.commit()
    other.close()
    with pytest.raises(UserError, match="a shard of suite 's' \\(config other\\)"):
        distributed.merge_shards(main_store, tmp_path)


@pytest.mark.slow
def test_a_single_process_run_merges_shards_an_earlier_run_left(reference, tmp_path, capsys):
    """A data-parallel run killed before its merge leaves shards; one process picks them up."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    store = RunStore(run / "predictions.sqlite")
    moved = [p for p in store.rows() if p.condition == "image:fog@3"]
    with store.conn:
        store.conn.execute("DELETE FROM predictions WHERE condition = 'image:fog@3'")
    store.close()
    for rank in (0, 1):
        shard = RunStore(distributed.shard_path(run, rank))
        shard.claim("kill_slice", json.loads((reference / "results.json").read_text())["manifest"]["config_hash"])
        shard.put(moved[rank::2])
        shard.close()
    assert main(args(run, 8)) == 0
    err = capsys.readouterr().err
    assert "merged" in err and "predictions.rank1.sqlite" in err
    eng = json.loads((run / "results.json").read_text())["manifest"]["engine"]
    assert eng["units_run"] == 0  # nothing recomputed: the shards held the missing rows
    assert rows_of(run) == rows_of(reference) and not distributed.shard_paths(run)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_torchrun_two_processes_equals_one(reference, tmp_path):
    run = tmp_path / "tr"
    r = subprocess.run(torchrun(run, 8), env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows_of(run) == rows_of(reference)
    assert result_rows(run) == result_rows(reference)
    manifest = json.loads((run / "results.json").read_text())["manifest"]
    assert manifest["processes"] == 2
    assert manifest["engine"]["units_run"] == manifest["engine"]["units_total"] == 4 * CONDITIONS
    assert not distributed.shard_paths(run) and r.stdout.count("d_clean") == 1  # one summary: rank 0's


def rank_process(launcher: subprocess.Popen, rank: int):
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "robust_atp.run" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def rank_1_once_it_wrote(launcher: subprocess.Popen, run: Path):
    """Rank 1's process of a running data-parallel run, once its shard holds a row."""
    shard1, deadline = distributed.shard_path(run, 1), time.time() + 240
    while count(shard1) == 0 and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = rank_process(launcher, 1)
    assert victim is not None and launcher.poll() is None, "the run ended before rank 1 could be killed"
    return victim


@pytest.mark.slow
def test_one_rank_killed_then_resumed_on_one_process(reference, tmp_path):
    run = tmp_path / "tr"
    launcher = subprocess.Popen(torchrun(run, 8), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        victim = rank_1_once_it_wrote(launcher, run)
        victim.send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    total = 8 * CONDITIONS * METHODS
    shards = {p.name: count(p) for p in distributed.shard_paths(run)}
    assert shards["predictions.rank1.sqlite"] > 0 and 0 < sum(shards.values()) < total
    assert count(run / "predictions.sqlite") == 0  # killed before the merge
    assert main(args(run, 8)) == 0
    eng = json.loads((run / "results.json").read_text())["manifest"]["engine"]
    assert 0 < eng["units_run"] < eng["units_total"]  # the shards' units were kept, not recomputed
    assert rows_of(run) == rows_of(reference) and count(run / "predictions.sqlite") == total
    assert not distributed.shard_paths(run)


@pytest.mark.slow
def test_ten_sigkills_at_random_points_then_resume_equal_an_uninterrupted_run(reference, tmp_path):
    """Ten runs killed at seeded random moments (each after at least one more unit was committed),
    each resumed by the next; the last one finishes. Nothing is lost or doubled."""
    rng = random.Random(9)
    run, db = tmp_path / "killed", tmp_path / "killed" / "predictions.sqlite"
    total = 8 * CONDITIONS * METHODS
    cmd = [sys.executable, "-m", "robust_atp.run"] + args(run, 8)
    seen = []
    for _ in range(10):
        before = count(db)
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while count(db) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.15))  # a random point inside the next unit (a unit is ~0.2-0.5 s)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(count(db))
    print(f"rows in the store after each kill: {seen} of {total}")
    assert all(a < b for a, b in zip([0] + seen, seen)) and seen[-1] < total, seen  # real progress, mid-run
    subprocess.run(cmd, env=env(), check=True, capture_output=True, timeout=300)
    assert count(db) == total
    assert rows_of(run) == rows_of(reference) and result_rows(run) == result_rows(reference)


def test_an_empty_store_beside_shards_keeps_its_suite(tmp_path):
    """A data-parallel run killed before its merge has rows only in its shards: another suite
    into that directory is refused, not rebound over them."""
    main_store = RunStore(tmp_path / "predictions.sqlite")
    main_store.claim("A", "hA")
    shard = RunStore(distributed.shard_path(tmp_path, 1))
    shard.claim("A", "hA")
    shard.put([pred("a")])
    shard.close()
    with pytest.raises(UserError, match="holds a run of suite 'A'"):
        main_store.claim("B", "hB", rebind_empty=not distributed.shard_paths(tmp_path))
    assert main_store.meta()["suite"] == "A"
    main_store.close()


def test_ranks_see_the_merged_stores_cost_records(tmp_path):
    """A finished data-parallel run with `cost:` run again: each rank reads the merged store's
    cost keys, so no rank loads the model to measure again."""
    from robust_atp.data.base import batch_key
    from robust_atp.data.shapes import load_shapes
    from robust_atp.engine import run_engine
    from robust_atp.store import read_cost_done, read_done
    from robust_atp.suite import CostCfg

    examples = load_shapes("val", limit=4)
    batches = [examples[:2], examples[2:]]
    main_store = RunStore(tmp_path / "predictions.sqlite")
    main_store.claim("s", "h")
    main_store.put([Prediction(ex.id, "clean", "full", "x", 0.0, {"exact_match": 0.0}, 144) for ex in examples])
    main_store.put_cost([("clean", "full", batch_key(b), {"prefill_ms": 1.0}) for b in batches])
    main_store.close()

    class Method:
        label, name, settings, needs_text, fastv_layer = "full", "full", {}, False, None

    def no_model():
        raise AssertionError("the model was loaded")

    for rank in (0, 1):
        shard = RunStore(distributed.shard_path(tmp_path, rank))
        stats = run_engine(examples=examples, methods=[Method()], image_conditions=[], adapter_factory=no_model,
                           store=shard, seed=0, metrics=["exact_match"], batch_size=2, progress=False,
                           shard=(rank, 2), done=read_done(tmp_path / "predictions.sqlite"),
                           cost=CostCfg(latency=True, batches=2),
                           cost_done=read_cost_done(tmp_path / "predictions.sqlite"))
        assert stats.units_run == 0
        shard.close()


# ----------------------------------------------------------------------------- --procs (robust_atp.launch)

def test_auto_procs_one_per_thread_on_the_cpu_only_when_the_weights_fit():
    from robust_atp.launch import auto_procs

    gb = 1 << 30
    assert auto_procs("cpu", 2, False, weights=25_000_000, memory=20 * gb, batches=6) == 2
    assert auto_procs("cpu", 4, False, weights=25_000_000, memory=20 * gb, batches=None) == 4
    assert auto_procs("cpu", 4, False, weights=25_000_000, memory=20 * gb, batches=3) == 3  # a rank per batch at most
    assert auto_procs("cpu", 2, False, weights=25_000_000, memory=20 * gb, batches=1) == 1
    assert auto_procs("cpu", 2, False, weights=14 * gb, memory=20 * gb, batches=6) == 1  # two 7B copies: no
    assert auto_procs("cpu", 4, False, weights=4 * gb, memory=20 * gb, batches=6) == 2  # two of 4 GB in half of 20
    assert auto_procs("cuda", 2, False, weights=25_000_000, memory=20 * gb, batches=6) == 1
    assert auto_procs("cpu", 2, True, weights=25_000_000, memory=20 * gb, batches=6) == 1  # --threads given
    assert auto_procs("cpu", 1, False, weights=25_000_000, memory=20 * gb, batches=6) == 1  # a loaded machine
    assert auto_procs("cpu", 2, False, weights=None, memory=20 * gb, batches=6) == 1  # a hub id: size unknown
    assert auto_procs("cpu", 2, False, weights=25_000_000, memory=None, batches=6) == 1


@pytest.mark.parametrize("check", [[], ["--check"]])
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_procs_is_one_line_and_exit_2(value, check, tmp_path, capsys):
    assert main(args(tmp_path / "run", 2) + ["--procs", value] + check) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --procs: must be a positive integer or auto, got {value!r}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_procs_two_equals_one(reference, tmp_path):
    run = tmp_path / "p2"
    r = subprocess.run([sys.executable, "-m", "robust_atp.run"] + args(run, 8) + ["--procs", "2"], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert rows_of(run) == rows_of(reference) and result_rows(run) == result_rows(reference)
    manifest = json.loads((run / "results.json").read_text())["manifest"]
    assert manifest["processes"] == 2 and manifest["engine"]["units_run"] == 4 * CONDITIONS
    assert not distributed.shard_paths(run) and r.stdout.count("d_clean") == 1  # one summary: rank 0's


@pytest.mark.slow
def test_a_rank_killed_under_procs_stops_the_run_and_a_rerun_resumes(reference, tmp_path):
    run = tmp_path / "p2"
    parent = subprocess.Popen([sys.executable, "-m", "robust_atp.run"] + args(run, 8) + ["--procs", "2"], env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        victim = rank_1_once_it_wrote(parent, run)
        others = [p for p in psutil.Process(parent.pid).children() if p.pid != victim.pid]
        victim.send_signal(signal.SIGKILL)
        assert parent.wait(timeout=120) == 1
        err = parent.stderr.read()
    finally:
        if parent.poll() is None:
            parent.kill()
    assert "error: rank 1 of 2 was killed by signal 9" in err
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in others)  # rank 0 stopped too
    assert main(args(run, 8) + ["--procs", "1"]) == 0
    assert rows_of(run) == rows_of(reference) and not distributed.shard_paths(run)


@pytest.mark.parametrize("rank, says", [(None, True), ("0", True), ("1", False)])
def test_ctrl_c_is_said_once_per_run(rank, says, monkeypatch, capsys):
    import robust_atp.run as run

    def interrupted(args, argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_run", interrupted)
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert run.main([str(SUITE)]) == 130
    assert ("interrupted: finished units are saved" in capsys.readouterr().err) == says
