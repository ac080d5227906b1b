"""--threads: the default from the machine, torch set for the run and restored, bad values refused."""
import pytest
import torch

from robust_atp.run import main
from robust_atp.threads import default_threads, torch_threads


@pytest.mark.parametrize("cores,load,env,processes,expected", [
    (2, 0.1, None, 1, 2),     # idle 2 cores: both
    (2, 1.6, None, 1, 1),     # another job on one of them: one thread
    (2, 5.0, None, 1, 1),     # overloaded: still one
    (16, 0.0, None, 1, 4),    # many idle cores: at most 4
    (8, 3.0, None, 1, 4),
    (8, 0.0, None, 4, 2),     # four data-parallel ranks share the cores
    (4, None, None, 1, 4),    # no load average: the cores
    (2, 0.0, "3", 1, 3),      # OMP_NUM_THREADS is the user's choice
    (2, 1.6, "junk", 1, 1),
])
def test_default_threads(cores, load, env, processes, expected):
    assert default_threads(cores, load, env, processes) == expected


def test_torch_threads_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before


def test_threads_must_be_positive(capsys):
    assert main(["suites/demo.yaml", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads: must be a positive integer, got 0"


@pytest.mark.slow
def test_a_run_uses_and_records_its_threads(tmp_path):
    import json
    import textwrap

    from tests.test_truncation import SUITE

    suite = tmp_path / "cut.yaml"
    suite.write_text(textwrap.dedent(SUITE.format(n=2)))
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    assert main([str(suite), "--out", str(tmp_path / "run"), "--no-progress", "--no-report", "--threads", str(want)]) == 0
    manifest = json.loads((tmp_path / "run" / "results.json").read_text())["manifest"]
    assert manifest["engine"]["threads"] == want
    assert torch.get_num_threads() == before
