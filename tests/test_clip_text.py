"""The CLIP text embeddings of ATP's relevance term do not depend on the batch, whatever padding
side the checkpoint's tokenizer names (CLIP's text tower reads positions from 0 and pools at the
first EOS: left padding would move both)."""
import json
import shutil

import torch

TEXTS = ["what color is the circle?", "is there a red square to the left of the blue triangle?", "how many?"]


def test_clip_text_embeddings_do_not_depend_on_the_batch(tiny_dir, tmp_path, make_adapter):
    clip = tmp_path / "clip"
    shutil.copytree(tiny_dir / "clip", clip)
    cfg_path = clip / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["padding_side"] = "left"
    cfg_path.write_text(json.dumps(cfg))
    adapter = make_adapter(tiny_dir / "llava", clip)
    assert adapter.clip_tokenizer.padding_side == "left"
    batched = adapter.encode_texts(TEXTS)
    alone = torch.cat([adapter.encode_texts([t]) for t in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5)
    # what the checkpoint's own padding side would give: the short texts' embeddings move
    with torch.inference_mode():
        enc = adapter.clip_tokenizer(TEXTS, padding=True, return_tensors="pt")
        left = adapter.clip.get_text_features(**enc).pooler_output
    assert not torch.allclose(left, alone, atol=1e-3)
