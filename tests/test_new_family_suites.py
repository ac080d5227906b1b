"""The VQA-C suites of the newer families validate without weights or downloads."""
from pathlib import Path

import pytest

from robust_atp.run import main

SUITES = Path(__file__).resolve().parents[1] / "suites"
FAMILIES = {"vqa_c_qwen2_5_vl": "qwen2_5_vl Qwen/Qwen2.5-VL-3B-Instruct (hub id",
            "vqa_c_qwen3_vl": "qwen3_vl Qwen/Qwen3-VL-4B-Instruct (hub id",
            "vqa_c_internvl": "internvl OpenGVLab/InternVL3-2B-hf (hub id",
            "vqa_c_llava_onevision": "llava_onevision llava-hf/llava-onevision-qwen2-7b-ov-hf (hub id"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_suite_checks(name, capsys):
    assert main([str(SUITES / f"{name}.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"suite {name} " in out and ": valid" in out and FAMILIES[name] in out and "weights not loaded" in out
