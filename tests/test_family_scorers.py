"""Qwen2.5-VL and Qwen3-VL take ATP's relevance term from an external scorer (`model.scorer`: their
towers are not in a CLIP space): its patches on the family's merged-token grid, its text tower."""
import pytest
import torch

from robust_atp.models.base import load_adapter
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import QWEN_PROMPT


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_scorer_relevance(family, tmp_path, open_clip_config, shapes_examples):
    from tests.helpers import tiny_families_new as t

    path = getattr(t, f"build_tiny_{family}")(tmp_path)
    a = load_adapter(ModelCfg(adapter=family, checkpoint=str(path), prompt=QWEN_PROMPT, generation={"max_new_tokens": 3},
                              scorer={"kind": "open_clip", "model": str(open_clip_config)}))
    exs = shapes_examples[:2]
    vision = a.encode_images([e.image() for e in exs])
    text = a.encode_texts([e.question for e in exs])
    n = vision.tokens.shape[1]
    assert vision.clip_patches.shape[:2] == (2, n) and vision.clip_patches.shape[2] == text.shape[1] > 0
    with_text = validate_method(MethodCfg(name="atp", keep=0.25)).apply(vision, text, ["", ""])
    without = validate_method(MethodCfg(name="atp", keep=0.25, alpha=1.0)).apply(vision, text, ["", ""])
    assert [len(k.indices) for k in with_text] == [len(k.indices) for k in without] == [max(1, round(0.25 * n))] * 2
    # the relevance term changes the choice somewhere (it is read, not ignored)
    assert any(not torch.equal(x.indices, y.indices) for x, y in zip(with_text, without))
