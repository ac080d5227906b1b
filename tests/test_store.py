"""The run store: identity, idempotent writes, refusal of another config."""
import sqlite3

import pytest

from robust_atp.errors import UserError
from robust_atp.store import Prediction, RunStore


def rows(n, cond="clean", method="full"):
    return [Prediction(f"e{i}", cond, method, "red", 1.0, {"exact_match": 1.0}, 144) for i in range(n)]


def test_claim_then_refuse_another_config(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.claim("demo", "abc")
    s.claim("demo", "abc")
    s.claim("other", "xyz")  # a store without a prediction holds nothing to protect: it is rebound
    assert s.meta()["config_hash"] == "xyz" and s.meta()["suite"] == "other"
    s.claim("demo", "abc")
    s.put(rows(1))
    with pytest.raises(UserError, match="holds a run of suite 'demo' \\(config abc\\)"):
        s.claim("demo", "xyz")
    s.close()


def test_put_is_idempotent_and_never_doubles(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.put(rows(3))
    s.put(rows(5))
    assert s.count() == 5
    assert s.done() == {(f"e{i}", "clean", "full") for i in range(5)}
    first = next(r for r in s.rows() if r.example_id == "e0")
    assert first.scores == {"exact_match": 1.0} and first.kept == 144
    s.close()


def test_rows_survive_reopen(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.put(rows(4, method="atp@0.25"))
    s.close()
    assert RunStore(tmp_path / "p.sqlite").count() == 4


def test_a_failed_batch_writes_nothing(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    bad = rows(2) + [Prediction("e9", "clean", "full", None, 0.0, {}, 1)]  # NOT NULL violation at the end
    with pytest.raises(sqlite3.IntegrityError):
        s.put(bad)
    assert s.count() == 0
    s.close()


def test_not_a_database_is_a_user_error(tmp_path):
    p = tmp_path / "p.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable run store"):
        RunStore(p)


def test_kept_indices_and_extra_round_trip(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.put([Prediction("e0", "clean", "atp", "red", 1.0, {}, 3, kept_indices=(0, 5, 9), extra={"object_recall": 0.5}),
           Prediction("e1", "clean", "tome", "red", 1.0, {}, 3)])
    got = {r.example_id: r for r in s.rows()}
    assert got["e0"].kept_indices == (0, 5, 9) and got["e0"].extra == {"object_recall": 0.5}
    assert got["e1"].kept_indices is None and got["e1"].extra == {}
    s.close()


def test_store_of_another_format_is_refused(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.claim("demo", "abc")
    with s.conn:
        s.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(UserError, match="format 1"):
        s.claim("demo", "abc")
    s.close()


def test_a_full_disk_rolls_the_whole_unit_back(tmp_path):
    s = RunStore(tmp_path / "p.sqlite")
    s.put(rows(3))
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL for a new page
    with pytest.raises(UserError, match="p.sqlite: cannot write \\(database or disk is full\\); the units "
                                        "committed before are kept"):
        s.put([Prediction(f"big{i}", "clean", "full", "x" * 2000, 0.0, {}, 144) for i in range(50)])
    assert s.count() == 3
    s.close()


def test_merge_copies_measured_cost_and_keeps_what_the_store_holds(tmp_path):
    """A data-parallel rank's shard carries its `cost:` measurements into the run store."""
    main, shard = RunStore(tmp_path / "p.sqlite"), RunStore(tmp_path / "p.rank1.sqlite")
    for s in (main, shard):
        s.claim("demo", "abc")
    main.put_cost([("clean", "full", "b0", {"prefill_ms": 1.0})])
    shard.put(rows(2))
    shard.put_cost([("clean", "full", "b0", {"prefill_ms": 9.0}), ("clean", "atp@0.25", "b0", {"prefill_ms": 0.5})])
    shard.close()
    assert main.merge(tmp_path / "p.rank1.sqlite") == 2
    assert main.cost_rows() == [("clean", "atp@0.25", "b0", {"prefill_ms": 0.5}),
                                ("clean", "full", "b0", {"prefill_ms": 1.0})]
    main.close()


def test_results_average_only_this_runs_sampled_batches(tmp_path):
    """Cost records from an earlier run with another batch size are left out, not averaged in."""
    from types import SimpleNamespace

    from robust_atp.data.shapes import load_shapes
    from robust_atp.results import this_runs_cost
    from robust_atp.suite import CostCfg

    examples = load_shapes("val", limit=6)
    records = [("clean", "full", f"{examples[0].id}+2", {"prefill_ms": 1.0}),
               ("clean", "full", f"{examples[0].id}+4", {"prefill_ms": 9.0}),
               ("clean", "full", f"{examples[2].id}+2", {"prefill_ms": 2.0})]
    suite = SimpleNamespace(batch_size=2, cost=CostCfg(latency=True, batches=1))
    assert this_runs_cost(records, examples, suite) == records[:1]
    suite = SimpleNamespace(batch_size=2, cost=CostCfg(latency=True, batches=2))
    assert this_runs_cost(records, examples, suite) == [records[0], records[2]]
    suite = SimpleNamespace(batch_size=2, cost=CostCfg())
    assert this_runs_cost(records, examples, suite) == []
