"""`model.device_map` (accelerate's big-model placement) and `attn_implementation`
(`models.placement`): on CPU a tiny model is split with an explicit map that offloads a ViT block
and a decoder layer to disk (accelerate's hooks load them as they run), and its saliency and answers
equal one device's; the rank shares of a data-parallel run; the attention kernel's refusals."""
import pytest
import torch

from robust_atp.errors import UserError
from robust_atp.models.base import load_adapter
from robust_atp.models.placement import check_attention, placement, rank_share
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg


def split_map(model, offload: int = 1) -> dict:
    """An explicit map: every block of each `layers` list on `cpu` but block `offload` on `disk`,
    the rest of the model on `cpu` (expanded only where a `layers` list lies below)."""
    holders = {name for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, torch.nn.ModuleList)}
    out = {}

    def walk(prefix, module):
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full in holders:
                out.update({f"{full}.{i}": "disk" if i == offload else "cpu" for i in range(len(child))})
            elif any(h.startswith(full + ".") for h in holders):
                walk(full + ".", child)
            else:
                out[full] = "cpu"

    walk("", model)
    return out


@pytest.fixture(scope="module")
def split_adapter(tiny_dir, tiny_adapter, tmp_path_factory):
    dm = split_map(tiny_adapter.model)
    assert sum(v == "disk" for v in dm.values()) == 2  # one ViT block, one decoder layer
    cfg = ModelCfg(checkpoint=str(tiny_dir / "llava"), clip=str(tiny_dir / "clip"), generation={"max_new_tokens": 5},
                   device_map=dm, offload_folder=str(tmp_path_factory.mktemp("offload")))
    return load_adapter(cfg)


def test_the_split_model_is_dispatched(split_adapter):
    hooked = [n for n, m in split_adapter.model.named_modules() if hasattr(m, "_hf_hook")]
    assert hooked and split_adapter.device == torch.device("cpu")
    assert any(p.device.type == "meta" for p in split_adapter.model.parameters())  # the offloaded blocks


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "atp", "keep": 0.25}, {"name": "fastv", "keep": 0.25}])
def test_split_answers_and_saliency_equal_one_device(split_adapter, tiny_adapter, shapes_examples, method):
    exs = shapes_examples[:4]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    m = validate_method(MethodCfg(**method))
    out = []
    for a in (tiny_adapter, split_adapter):
        vision = a.encode_images(images)
        text = a.encode_texts(questions) if m.needs_text else None
        kept = m.apply(vision, text, [""] * len(exs))
        if m.fastv_layer is not None:
            from robust_atp.models.fastv import FastVSpec

            spec = FastVSpec(m.fastv_layer, m.fastv_k(vision.tokens.shape[1]))
            answers = a.generate([k.tokens for k in kept], questions, in_llm=spec)
        else:
            answers = a.generate([k.tokens for k in kept], questions)
        out.append((vision.cls_attn, [k.indices for k in kept], answers))
    (s1, i1, a1), (s2, i2, a2) = out
    assert torch.equal(s1, s2)
    assert all(torch.equal(x, y) for x, y in zip(i1, i2))
    assert a1 == a2


def test_rank_shares_cut_the_node_into_contiguous_blocks():
    assert rank_share(0, 1, 4) == [0, 1, 2, 3]
    assert [rank_share(r, 2, 4) for r in range(2)] == [[0, 1], [2, 3]]
    assert [rank_share(r, 3, 7) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UserError, match="model.device_map: 4 processes on this node share 2 GPU"):
        rank_share(0, 4, 2)


def test_placement_per_rank():
    explicit = {"model.vision_tower": 0, "model.language_model": "cuda:1", "lm_head": "cpu"}
    assert placement(explicit, None, local_rank=1, local_world=2, n_gpus=4) == {
        "device_map": {"model.vision_tower": 2, "model.language_model": 3, "lm_head": "cpu"}}
    with pytest.raises(UserError, match="'model.language_model' -> GPU 1, but this process owns 1 GPU"):
        placement(explicit, None, local_rank=0, local_world=4, n_gpus=4)
    free = {0: 10, 1: 11, 2: 12, 3: 13, "cpu": 99}
    assert placement("auto", "/tmp/o", local_rank=1, local_world=2, n_gpus=4, free_memory=free) == {
        "device_map": "auto", "max_memory": {2: 12, 3: 13, "cpu": 99}, "offload_folder": "/tmp/o"}
    assert placement("balanced", None, n_gpus=4) == {"device_map": "balanced"}  # one process: every GPU


def test_flash_attention_refusals(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a))
    with pytest.raises(UserError, match="model.attn_implementation: flash_attention_2 needs the flash-attn package"):
        check_attention(ModelCfg(checkpoint="x", attn_implementation="flash_attention_2", dtype="bfloat16",
                                 device="cuda"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a))
    with pytest.raises(UserError, match="model.dtype: flash_attention_2 runs in float16 or bfloat16"):
        check_attention(ModelCfg(checkpoint="x", attn_implementation="flash_attention_2", device="cuda"))
    with pytest.raises(UserError, match="model.device: flash_attention_2 needs a CUDA device"):
        check_attention(ModelCfg(checkpoint="x", attn_implementation="flash_attention_2", dtype="bfloat16"))
    check_attention(ModelCfg(checkpoint="x", attn_implementation="flash_attention_2", dtype="bfloat16", device="cuda"))


def test_device_map_validation_and_hash(tmp_path):
    with pytest.raises(ValueError, match="must be one of auto, balanced"):
        ModelCfg(checkpoint="x", device_map="everywhere")
    with pytest.raises(ValueError, match="a device is a GPU index"):
        ModelCfg(checkpoint="x", device_map={"lm_head": "gpu0"})
    with pytest.raises(ValueError, match="'disk' in device_map needs offload_folder"):
        ModelCfg(checkpoint="x", device_map={"lm_head": "disk"})
    from robust_atp.suite import load_suite

    base = load_suite("suites/demo_ci.yaml", {})
    placed = load_suite("suites/demo_ci.yaml", {"model.device_map": "auto"})
    assert placed.model.device_map == "auto" and placed.config_hash() == base.config_hash()
