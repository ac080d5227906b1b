"""The run-directory lock: a second run is refused naming the holder; a dead holder's lock is taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from robust_atp.errors import UserError
from robust_atp.lock import LOCK, RunLock
from robust_atp.run import main

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from robust_atp.lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def test_a_held_directory_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError) as e:
            RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"in use by another run (pid {os.getpid()} on host {socket.gethostname()}, started 20" in msg
    assert "\n" not in msg
    RunLock(tmp_path).acquire().release()  # released: free again
    assert (tmp_path / LOCK).read_text() == ""  # a normal end leaves no holder behind


def test_the_lock_of_a_killed_process_is_taken_over_and_said_so(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        suite = ROOT / "suites" / "demo_ci.yaml"
        assert main([str(suite), "--out", str(tmp_path), "--no-progress", "--no-report"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"error: {tmp_path}: in use by another run (pid {holder.pid} on host "
                               f"{socket.gethostname()}, started {json.loads((tmp_path / LOCK).read_text())['started']}); "
                               "wait for it to end or choose another --out")
        assert not (tmp_path / "predictions.sqlite").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lines = []
    lock = RunLock(tmp_path, lines.append).acquire()
    assert lines == [f"{tmp_path}: taking over the lock of a run that died (pid {holder.pid} on host "
                     f"{socket.gethostname()}, started {lines[0].rsplit('started ', 1)[1]}"]
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_stale_lock_file_does_not_block_a_run_directory(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}))
    lines = []
    RunLock(tmp_path, lines.append).acquire().release()
    assert lines == [f"{tmp_path}: taking over the lock of a run that died (pid 999999999 on host elsewhere, "
                     "started 2026-01-01T00:00:00+00:00)"]
