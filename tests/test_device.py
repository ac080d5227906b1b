"""A device this machine does not have: one line naming the suite file and the field, exit 2, and
no run directory made (no store, no lock)."""
import pytest
import torch

from robust_atp.run import main

SUITE = """name: dev
dataset: {{loader: shapes, split: test, limit: 2}}
model: {{checkpoint: zoo:shapes_vlm/llava, device: {device}}}
methods: [{{name: full}}]
"""


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_device_flag_without_the_device(tmp_path, capsys, no_accelerator, device):
    suite = tmp_path / "dev.yaml"
    suite.write_text(SUITE.format(device="cpu"))
    out = tmp_path / "new_run"
    assert main([str(suite), "--out", str(out), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {suite}: --device (model.device): '{device}' requested")
    assert not out.exists()


def test_suite_device_without_the_device(tmp_path, capsys, no_accelerator):
    suite = tmp_path / "dev.yaml"
    suite.write_text(SUITE.format(device="cuda"))
    out = tmp_path / "new_run"
    assert main([str(suite), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: {suite}: model.device: 'cuda' requested but no CUDA device is "
                                       "available (use --device cpu)\n")
    assert not out.exists()
