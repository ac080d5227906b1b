"""ToMe inside the vision tower and VisionZip before the projector, through the adapters on tiny
random models: what the tower computes, what the LLM (or the Q-Former) receives, which adapters
refuse, what the engine runs and what the cost model counts."""
import json
import textwrap
from types import SimpleNamespace

import pytest
import torch

from robust_atp import cost
from robust_atp.errors import UserError
from robust_atp.prune.methods import validate_method
from robust_atp.prune.tome import ToMeTower, bipartite_soft_matching, merge_wavg
from robust_atp.prune.visionzip import anyres_layout, visionzip, visionzip_apply, visionzip_counts, visionzip_plan
from robust_atp.suite import MethodCfg


@pytest.fixture(scope="module")
def images(shapes_examples):
    return [e.image() for e in shapes_examples[:3]]


@pytest.fixture(scope="module")
def eager(tiny_eager_adapter):
    return tiny_eager_adapter


def _tome_tower_by_hand(tower, px, schedule, prop_attn=True):
    """ToMe's block (timm patch) on a CLIP tower, attention written out: softmax(q k^T * scale +
    log size) v, merge on the keys averaged over heads between attention and MLP."""
    h = tower.pre_layrnorm(tower.embeddings(px))
    size = None
    for block, r in zip(tower.encoder.layers, schedule):
        attn = block.self_attn
        x = block.layer_norm1(h)
        b, t, c = x.shape
        split = lambda y: y.view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
        q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        logits = q @ k.transpose(-1, -2) * attn.scale
        if prop_attn and size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        h = h + attn.out_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))
        if r > 0:
            merge, _ = bipartite_soft_matching(k.mean(1), r, class_token=True)
            h, size = merge_wavg(merge, h, size)
        h = h + block.mlp(block.layer_norm2(h))
    return h, size


@pytest.mark.parametrize("keep,prop_attn", [(0.25, True), (0.5, False)])
def test_tome_in_the_tower_is_tomes_block(tiny_adapter, images, keep, prop_attn):
    spec = ToMeTower(keep=keep, prop_attn=prop_attn)
    merged = tiny_adapter.encode_images_merged(images, spec)
    tower = tiny_adapter.vision_tower
    sched = spec.schedule(36, 2)  # the tiny tower: 3 blocks, the projector reads layer -2 (2 blocks)
    assert sched == ([18, 9] if keep == 0.25 else [9, 9])
    with torch.inference_mode():
        h, size = _tome_tower_by_hand(tower, tiny_adapter.pixel_values(images), sched, prop_attn)
        ref = tiny_adapter.model.model.multi_modal_projector(h[:, 1:])
    k = spec.target(36)
    assert merged.tokens.shape == (3, k, ref.shape[-1]) and torch.allclose(merged.tokens, ref, atol=1e-5)
    assert torch.equal(merged.token_sizes, size[:, 1:, 0]) and merged.token_sizes.sum(1).tolist() == [36.0] * 3
    kept = validate_method(MethodCfg(name="tome", keep=keep, prop_attn=prop_attn)).apply(merged, None, [""] * 3)
    assert [len(x) for x in kept] == [k] * 3 and all(int(x.sizes.sum()) == 36 for x in kept)


def test_tome_keeping_every_token_is_the_tower_itself(tiny_adapter, images):
    merged = tiny_adapter.encode_images_merged(images, ToMeTower(keep=1.0))
    assert torch.equal(merged.tokens, tiny_adapter.encode_images(images).tokens)


def test_proportional_attention_changes_what_the_tower_gives(tiny_adapter, images):
    a = tiny_adapter.encode_images_merged(images, ToMeTower(keep=0.25))
    b = tiny_adapter.encode_images_merged(images, ToMeTower(keep=0.25, prop_attn=False))
    assert not torch.allclose(a.tokens, b.tokens, atol=1e-4)


def test_feature_layer_is_layer_minus_2s_hidden_keys_and_attention(eager, images):
    vision = eager.encode_images(images)
    layer = vision.feature_layer
    keys = {}
    block = eager.vision_tower.encoder.layers[-2]
    handle = block.self_attn.k_proj.register_forward_hook(lambda m, a, out: keys.setdefault("k", out))
    with torch.inference_mode():
        out = eager.vision_tower(eager.pixel_values(images), output_hidden_states=True, output_attentions=True)
    handle.remove()
    k = keys["k"]
    assert torch.equal(layer.hidden[:, 0], out.hidden_states[-2])
    assert torch.allclose(layer.keys[:, 0], k.view(*k.shape[:2], block.self_attn.num_heads, -1).mean(2), atol=1e-6)
    assert torch.allclose(layer.cls_attn[:, 0], out.attentions[-2][:, :, 0, 1:], atol=1e-6)
    assert layer.mosaic is None and not layer.cls_prepended


def test_visionzip_merges_before_the_projector_and_hands_the_llm_cls_first(tiny_adapter, images):
    vision = tiny_adapter.encode_images(images)
    kept = validate_method(MethodCfg(name="visionzip", keep=0.25)).apply(vision, None, [""] * 3)
    layer = vision.feature_layer
    zipped = visionzip(layer.hidden[:, 0], layer.cls_attn[:, 0], layer.keys[:, 0], 8, 1)  # K = 9 = 8 + 1
    with torch.inference_mode():
        projected = tiny_adapter.model.model.multi_modal_projector(zipped)
        cls = tiny_adapter.model.model.multi_modal_projector(layer.hidden[:, 0, 0])
    for i, x in enumerate(kept):  # (the projector over 3 images or 1 may round differently on 2 threads)
        assert torch.allclose(x.tokens, projected[i], atol=1e-6) and x.indices is None
        assert x.sizes[:8].tolist() == [1] * 8 and int(x.sizes.sum()) == 37  # 36 patches + CLS
        assert torch.allclose(x.tokens[0], cls[i], atol=1e-6)  # the projected CLS token comes first


def test_visionzip_on_llava_next_gives_every_crop_its_budget_in_the_official_layout(tiny_next_dir, shapes_examples):
    from robust_atp.models.base import load_adapter
    from robust_atp.suite import ModelCfg

    nxt = load_adapter(ModelCfg(adapter="llava_next", checkpoint=str(tiny_next_dir / "llava_next"),
                                clip=str(tiny_next_dir / "clip"), generation={"max_new_tokens": 2}))
    ims = [e.image() for e in shapes_examples[:2]]
    vision = nxt.encode_images(ims)
    layer = vision.feature_layer
    crops, side2 = layer.hidden.shape[1], layer.hidden.shape[2] - 1
    assert crops == 1 + layer.mosaic[0] * layer.mosaic[1]
    k = round(0.5 * side2)
    kept = validate_method(MethodCfg(name="visionzip", keep=0.5)).apply(vision, None, ["", ""])
    for i, x in enumerate(kept):
        plan = visionzip_plan(layer.cls_attn[i], layer.keys[i], *visionzip_counts(k))
        ref = anyres_layout(layer.project(visionzip_apply(plan, layer.hidden[i])), plan, layer.mosaic)
        assert len(x) == crops * k and torch.equal(x.tokens, ref) and int(x.sizes.sum()) == crops * (side2 + 1)
    # merged tokens reach the LLM as they are: no newlines
    seen = []
    handle = nxt.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    nxt.generate([x.tokens for x in kept], ["what colour?"] * 2, kept_indices=[None, None])
    handle.remove()
    assert seen[0] == crops * k + nxt.prompt_length("what colour?")


def test_visionzip_on_blip2_hands_the_qformer_the_official_tokens(tiny_blip2_dir, shapes_examples):
    from robust_atp.models.base import load_adapter
    from robust_atp.suite import ModelCfg
    from tests.helpers.tiny_families import BLIP2_PROMPT

    blip = load_adapter(ModelCfg(adapter="blip2", checkpoint=str(tiny_blip2_dir), prompt=BLIP2_PROMPT,
                                 generation={"max_new_tokens": 2}))
    ims = [e.image() for e in shapes_examples[:2]]
    vision = blip.encode_images(ims)
    layer = vision.feature_layer
    n = layer.hidden.shape[2] - 1
    kept = validate_method(MethodCfg(name="visionzip", k=8)).apply(vision, None, ["", ""])
    zipped = visionzip(layer.hidden[:, 0], layer.cls_attn[:, 0], layer.keys[:, 0], 7, 1)
    seen = []
    handle = blip.model.qformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)
    blip.generate([x.tokens for x in kept], ["q", "q"], **blip.generation_inputs(vision, [x.indices for x in kept]))
    handle.remove()
    assert torch.equal(seen[0], zipped)  # CLS (the adapter's own) + 6 dominant + 1 contextual
    assert [len(x) for x in kept] == [7, 7] and int(kept[0].sizes.sum()) == n
    with torch.inference_mode():
        k = blip.model.vision_model.encoder.layers[-1].self_attn.qkv(
            blip.model.vision_model.encoder.layers[-1].layer_norm1(
                blip.model.vision_model(blip.pixel_values(ims), output_hidden_states=True).hidden_states[-2]))
    attn = blip.model.vision_model.encoder.layers[-1].self_attn
    keys = k.view(2, n + 1, 3, attn.num_heads, attn.head_dim)[:, :, 1].mean(2)
    assert torch.allclose(layer.keys[:, 0], keys, atol=1e-6)


def test_adapters_say_whether_they_merge_inside_the_tower():
    from robust_atp.preflight import check_tower_methods
    from robust_atp.models.blip2 import Blip2Adapter
    from robust_atp.models.llava import LlavaAdapter
    from robust_atp.models.llava_next import LlavaNextAdapter
    from robust_atp.models.qwen2_vl import Qwen2VLAdapter

    assert LlavaAdapter.merges_in_tower and LlavaNextAdapter.merges_in_tower
    assert not Blip2Adapter.merges_in_tower and not Qwen2VLAdapter.merges_in_tower
    tome = validate_method(MethodCfg(name="tome", keep=0.25))
    check_tower_methods([tome], SimpleNamespace(merges_in_tower=True))
    with pytest.raises(UserError, match=r"method 'tome@0.25': tome merges tokens inside the vision tower, which the "
                                        r"Blip2Adapter cannot do \(use tome_posthoc"):
        check_tower_methods([validate_method(MethodCfg(name="full")), tome], Blip2Adapter.__new__(Blip2Adapter))


def test_visionzip_refuses_a_tower_without_cls():
    vision = SimpleNamespace(tokens=torch.zeros(1, 4, 2), feature_layer=None)
    with pytest.raises(UserError, match="visionzip needs the ViT's CLS token"):
        validate_method(MethodCfg(name="visionzip", keep=0.5)).apply(vision, None, [""])


def test_the_engine_runs_one_merged_tower_pass_per_tome_method_and_image_condition(tmp_path):
    from robust_atp.run import main

    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent("""
        name: tower
        dataset: {loader: shapes, split: val, limit: 4}
        model: {checkpoint: zoo:shapes_vlm/llava, generation: {max_new_tokens: 2}}
        methods: [{name: full}, {name: tome, keep: 0.25}, {name: tome, keep: 0.5}, {name: visionzip, keep: 0.25}]
        perturbations: {image: {corruptions: [fog], severities: [1]}}
        batch_size: 2
    """))
    assert main([str(p), "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    eng = res["manifest"]["engine"]
    assert eng["vision_passes"] == 4 and eng["merged_tower_passes"] == 8  # 2 batches x 2 conditions x 2 methods
    rows = {(r["condition"], r["method"]): r for r in res["rows"]}
    assert rows["clean", "tome@0.25"]["kept_tokens"] == 36 and rows["clean", "tome@0.5"]["kept_tokens"] == 72
    assert rows["clean", "visionzip@0.25"]["kept_tokens"] == 36
    sample = next(json.loads(s) for s in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
                  if s and json.loads(s)["method"] == "tome@0.25")
    from transformers import LlavaConfig

    from robust_atp.models.zoo import ZOO_DIR

    mc = LlavaConfig.from_pretrained(ZOO_DIR / "shapes_vlm" / "llava")
    vc = mc.vision_config
    proj = {"in": vc.hidden_size, "out": mc.text_config.hidden_size, "layers": 2}
    assert sample["vision_flops"] == cost.tome_tower_flops(vc, 144, [36, 36, 36], proj)
    assert sample["vision_flops"] < cost.vision_flops(vc, 144, proj)


def test_tome_tower_flops_are_what_torch_counts(tiny_adapter, images):
    """FlopCounterMode over the merged tower pass = the analytical tower (attention over t_l
    tokens, MLP over t_l - r_l) + the projector + ToMe's matching (|A| x |B| key cosines)."""
    spec = ToMeTower(keep=0.25)
    counted = cost.counted_flops(lambda: tiny_adapter.encode_images_merged(images[:1], spec))
    cfgs = tiny_adapter.cost_configs()
    sched = spec.schedule(36, cfgs["feature_blocks"])
    vc = cfgs["vision"]
    matching = cost.scorer_flops("tome", {}, 36, 9, d=48, c=0, head_dim=vc.hidden_size // vc.num_attention_heads,
                                 schedule=sched)
    assert counted == cost.tome_tower_flops(vc, 36, sched, cfgs["projector"]) + matching


def test_tome_and_visionzip_do_not_depend_on_the_batch(tiny_adapter, images):
    spec = ToMeTower(keep=0.25)
    together = tiny_adapter.encode_images_merged(images, spec)
    vz = validate_method(MethodCfg(name="visionzip", keep=0.25))
    zipped = vz.apply(tiny_adapter.encode_images(images), None, [""] * 3)
    for i, im in enumerate(images):
        alone = tiny_adapter.encode_images_merged([im], spec)
        assert torch.equal(alone.token_sizes[0], together.token_sizes[i])  # the same merges
        assert torch.allclose(alone.tokens[0], together.tokens[i], atol=1e-5)
        one = vz.apply(tiny_adapter.encode_images([im]), None, [""])[0]
        assert torch.equal(one.sizes, zipped[i].sizes) and torch.allclose(one.tokens, zipped[i].tokens, atol=1e-5)


def test_a_tower_merge_on_blip2_is_one_error_line_before_any_work(tmp_path, tiny_blip2_dir, capsys):
    from robust_atp.run import main
    from tests.helpers.tiny_families import BLIP2_PROMPT

    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(f"""
        name: refused
        dataset: {{loader: shapes, split: val, limit: 2}}
        model: {{adapter: blip2, checkpoint: "{tiny_blip2_dir}", prompt: "{BLIP2_PROMPT.encode('unicode_escape').decode()}"}}
        methods: [{{name: full}}, {{name: tome, keep: 0.25}}]
    """))
    assert main([str(p), "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: method 'tome@0.25': tome merges tokens inside the vision tower, which the Blip2Adapter "
                       "cannot do (use tome_posthoc, which merges after the tower)")
    assert "Traceback" not in "\n".join(err)
    import sqlite3

    with sqlite3.connect(tmp_path / "run" / "predictions.sqlite") as db:
        assert db.execute("select count(*) from predictions").fetchone()[0] == 0
