"""The suites of the token-pruning benchmarks (--check, local data counted), the demo's POPE-style
shapes split as POPE builds it, and grouped benchmarks through a real run (group_id in the samples,
group-level values in results.json, statistics clustered by group)."""
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.pruning_bench_data import write_mmbench_tsv, write_mme, write_pope, write_scienceqa, write_textvqa
from robust_atp.data import shapes
from robust_atp.data.base import load_examples
from robust_atp.data.shapes_pope import object_statistics, pope_images
from robust_atp.run import main

SUITES = Path(__file__).resolve().parents[1] / "suites"
HUB = {"pope": "lmms-lab/POPE", "textvqa": "lmms-lab/textvqa", "textvqa_no_ocr": "lmms-lab/textvqa",
       "mme": "lmms-lab/MME", "scienceqa_img": "lmms-lab/ScienceQA", "mmbench_en": "lmms-lab/MMBench",
       "gqa": "lmms-lab/GQA"}
# the published LLaVA-1.5-7B figure each suite is put beside (textvqa_no_ocr: none, the papers use OCR tokens)
PUBLISHED = {"pope": "f1 from pope_f1", "textvqa": "accuracy from textvqa_accuracy",
             "mme": "perception+cognition from mme_accuracy, perception from mme_accuracy",
             "scienceqa_img": "accuracy from scienceqa_accuracy_llava", "mmbench_en": "accuracy from mmbench_circular",
             "gqa": "accuracy from gqa_accuracy_llava"}


def variant(tmp_path, name, edit) -> Path:
    raw = yaml.safe_load((SUITES / f"{name}.yaml").read_text())
    edit(raw)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return p


@pytest.mark.parametrize("name", sorted(HUB))
def test_benchmark_suites_check(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main([str(SUITES / f"{name}.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"suite {name} (" in out and ": valid" in out and "weights not loaded" in out
    assert f"hub dataset '{HUB[name]}'" in out and "llava-hf/llava-1.5-7b-hf (hub id" in out
    assert "methods (13): full, atp@k192, atp@k128, atp@k64, visionzip@k192" in out
    assert "conditions (16): clean, image:gaussian_noise@3" in out and "plan: ? examples x 16 conditions" in out
    lines = out.splitlines()
    if name not in PUBLISHED:
        assert not any(line.startswith("  published:") for line in lines)
        return
    bench = {"textvqa": "textvqa"}.get(name, name)
    at = lines.index(f"  published: llava-1.5-7b {bench} ({PUBLISHED[name]}; clean condition; tokens out of 576)")
    compared = [line.split(" (")[0].strip() for line in lines[at + 1:] if line.startswith("    ") and "tokens): " in line]
    peers = [f"{m}@k{k}" for m in ("visionzip", "divprune", "fastv") for k in (192, 128, 64)]
    # VisionZip at 128 tokens on MME is left out of published/ (its copies disagree)
    assert compared == ["full"] + [p for p in peers if not (name == "mme" and p == "visionzip@k128")]
    assert f"    no published value: atp@k192, atp@k128, atp@k64{', visionzip@k128' if name == 'mme' else ''}" in lines
    assert any(line.startswith("    visionzip@k64 (64 tokens): ") and "(arXiv 2412.04467)" in line for line in lines)


@pytest.mark.parametrize("name, write, options, n", [
    ("pope", write_pope, {"subset": "all"}, 9),
    ("mme", write_mme, {"subtasks": ["existence", "artwork", "code_reasoning"]}, 8),
    ("scienceqa_img", write_scienceqa, {}, 2),
    ("mmbench_en", write_mmbench_tsv, {}, 4),
    ("textvqa", write_textvqa, {"ocr": True}, 2),
])
def test_benchmark_suites_count_local_data(name, write, options, n, tmp_path, capsys):
    root = write(tmp_path / "data")

    def edit(r):
        r["dataset"].update(source=str(root), options=options)
        r["dataset"].pop("limit", None)
        if name == "textvqa":
            r["dataset"]["split"] = "val"
    assert main([str(variant(tmp_path, name, edit)), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"data: found, {n} examples" in out and f"plan: {n} examples x 16 conditions x 13 methods" in out


def test_benchmark_suite_without_data_is_valid_and_says_where(tmp_path, capsys):
    suite = variant(tmp_path, "mme", lambda r: r["dataset"].update(source=str(tmp_path / "nowhere")))
    assert main([str(suite), "--check"]) == 0
    out = capsys.readouterr().out
    assert "not found here: dataset.source:" in out and "missing dataset root" in out
    assert "download from https://github.com/BradyFU" in out


def test_benchmark_suite_bad_option_is_one_line(tmp_path, capsys):
    suite = variant(tmp_path, "pope", lambda r: r["dataset"].update(options={"subset": "all", "negative": "x"}))
    assert main([str(suite), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.options:" in err and "negative" in err


def test_demo_pope_suite_checks(capsys):
    assert main([str(SUITES / "demo_pope.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "data: found, 900 examples" in out
    assert "plan: 900 examples x 4 conditions x 6 methods = 21600 generations" in out


# ----------------------------------------------------------------------------- the shapes POPE split

def test_shapes_pope_built_as_pope_builds_it():
    images = pope_images(0, "test", 20)
    seen, by_freq, by_co = object_statistics(images)
    ex = load_examples("shapes_pope", n_images=20)
    assert len(ex) == 20 * 6 * 3
    for strategy in ("random", "popular", "adversarial"):
        rows = [e for e in ex if e.meta["pope_split"] == strategy]
        for k, (index, objects) in enumerate(images):
            qs = rows[6 * k: 6 * k + 6]
            assert {e.image_id for e in qs} == {f"shapes/test/{index}"}
            named = [e.question[len("is there a "):-1] for e in qs]
            assert [e.answers[0] for e in qs] == ["yes", "no"] * 3
            assert named[0::2] == objects[:3]  # the first three objects, in the scene's order
            negatives = named[1::2]
            assert len(set(negatives)) == 3 and not set(negatives) & set(objects)
            assert all(n in seen for n in negatives)
            if strategy == "popular":  # the most frequent objects not in the image, in order
                assert negatives == [o for o in by_freq if o not in objects][:3]
            if strategy == "adversarial":  # each positive's most co-occurring object still free
                banned = set(objects)
                for pos, neg in zip(objects[:3], negatives):
                    free = [o for o in by_co[pos] if o not in banned]
                    if free:
                        assert neg == free[0]
                    banned.add(neg)
    assert all(e.meta["targets"] == ([] if e.answers[0] == "no" else [int(e.id.rsplit("/", 1)[1]) // 2])
               for e in ex)


def test_shapes_pope_leaves_the_shapes_split_alone():
    pope = load_examples("shapes_pope", n_images=5, negatives="popular")
    base = {e.image_id: e for e in load_examples("shapes", split="test", limit=12)}
    for e in pope:
        ref = base[e.image_id]
        assert e.meta["boxes"] == ref.meta["boxes"] and e.meta["objects"] == ref.meta["objects"]
        assert e.image().tobytes() == ref.image().tobytes()
        assert len(ref.meta["objects"]) >= 3
    # the interleaved order and limits: a larger limit extends the prefix, each strategy gets its share
    full = load_examples("shapes_pope", n_images=5)
    assert [e.id for e in load_examples("shapes_pope", n_images=5, limit=7)] == [e.id for e in full[:7]]
    assert [e.meta["pope_split"] for e in full[:3]] == ["random", "popular", "adversarial"]
    assert [e.id for e in load_examples("shapes_pope", n_images=5)] == [e.id for e in full]  # deterministic
    with pytest.raises(ValueError, match="negatives must be one of"):
        load_examples("shapes_pope", negatives="frequent")


# ----------------------------------------------------------------------------- grouped benchmarks, run

def _demo_model(r):
    r["model"].update(checkpoint="zoo:shapes_vlm/llava", clip="zoo:shapes_vlm/clip", dtype="float32", device="cpu",
                      generation={"max_new_tokens": 3})
    r["methods"] = [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.5}]
    r["perturbations"] = {}
    r["batch_size"] = 4
    r["report"] = {"formats": ["html"]}


FAKE_PUBLISHED = """
model: llava-1.5-7b
benchmarks: {mmbench_en: accuracy, mme: perception+cognition, mme_perception: perception}
sources:
  fake: {paper: "A fake table", arxiv: "0000.00000", table: "Table 9", read_in: "this test"}
rows:
  - {source: fake, method: full, tokens: 144, values: {mmbench_en: 50.0, mme: 100.0, mme_perception: 80.0}}
  - {source: fake, method: atp, tokens: 36, values: {mmbench_en: 40.0}}
"""


@pytest.mark.slow
def test_mme_and_mmbench_through_a_run(tmp_path, monkeypatch, capsys):
    """The demo model on the MME and MMBench fixtures through the real code path: group ids in the
    samples, accuracy+ / perception / circular accuracy in results.json, a report clustered by group,
    and the clean figures beside published ones (a published/ file at the demo model's 144 tokens)."""
    from robust_atp import published

    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "fake.yaml").write_text(FAKE_PUBLISHED)
    monkeypatch.setattr(published, "PUBLISHED_DIR", tmp_path / "published")
    for name, root, options in (("mme", write_mme(tmp_path / "mme"), {"subtasks": ["existence", "artwork",
                                                                                   "code_reasoning"]}),
                                ("mmbench_en", write_mmbench_tsv(tmp_path / "mmb"), {})):
        def edit(r):
            r["dataset"].update(source=str(root), options=options)
            _demo_model(r)
        run = tmp_path / f"run_{name}"
        assert main([str(variant(tmp_path, name, edit)), "--out", str(run), "--no-progress"]) == 0
        res = json.loads((run / "results.json").read_text())
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        assert res["manifest"]["config"]["stats"]["cluster_by"] == "group_id"
        assert all(s["group_id"] == (s["image_id"] if name == "mme" else s["image_id"].split("/")[1])
                   for s in samples)
        for row in res["rows"]:
            mine = [s for s in samples if s["method"] == row["method"]]
            if name == "mme":
                b = row["breakdown"]["mme_accuracy"]
                assert set(b["subtasks"]) == {"existence", "artwork", "code_reasoning"}
                both = {}
                for s in mine:
                    both.setdefault(s["group_id"], []).append(s["score"])
                assert row["metrics"]["mme_accuracy_plus"] == round(
                    sum(all(v == 1.0 for v in x) for x in both.values()) / len(both), 6)
                assert b["perception"] == round(b["subtasks"]["existence"]["score"]
                                                + b["subtasks"]["artwork"]["score"], 4)
            else:
                groups = {}
                for s in mine:
                    groups.setdefault(s["group_id"], []).append(s["score"])
                assert row["metrics"]["mmbench_circular"] == round(
                    sum(all(v == 1.0 for v in g) for g in groups.values()) / len(groups), 6)
        assert (run / "report.html").is_file()
        clean = {r["method"]: r for r in res["rows"] if r["condition"] == "clean"}
        pub = res["published"]
        assert pub["benchmark"] == name
        assert pub["not_compared"] == (["atp@0.25 (36 tokens: no published value)"] if name == "mme" else [])
        cells = [(r["method"], r["tokens"], r["metric"], r["run"], r["published"], r["difference"]) for r in pub["rows"]]
        if name == "mme":  # 2 of 10 perception and 1 of 4 cognition subtasks: no sum to compare
            assert cells == [("full", 144, "perception+cognition", None, 100.0, None),
                             ("full", 144, "perception", None, 80.0, None)]
            assert "full, perception: the run holds 2 of 10 perception subtasks: no perception score to compare" \
                in pub["notes"]
        else:
            mine = {m: round(100 * clean[m]["metrics"]["mmbench_circular"], 4) for m in ("full", "atp@0.25")}
            assert cells == [("full", 144, "accuracy", mine["full"], 50.0, round(mine["full"] - 50.0, 4)),
                             ("atp@0.25", 36, "accuracy", mine["atp@0.25"], 40.0, round(mine["atp@0.25"] - 40.0, 4))]
        out = capsys.readouterr().out
        assert f"beside published: llava-1.5-7b {name}, clean condition" in out
        assert 'id="published-table"' in (run / "report.html").read_text()


def test_demo_pope_through_a_run(tmp_path):
    """A slice of suites/demo_pope.yaml: the breakdown is the LLaVA eval_pope figures of the rows."""
    from robust_atp.metrics.pope import confusion_llava

    suite = variant(tmp_path, "demo_pope", lambda r: (r.update(perturbations={}, batch_size=18),
                                                      r["dataset"]["options"].update(n_images=3)))
    run = tmp_path / "run"
    assert main([str(suite), "--out", str(run), "--no-progress", "--no-report"]) == 0
    res = json.loads((run / "results.json").read_text())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 54 * 6 and {s["prediction"] for s in samples} <= {"yes", "no"}
    full = [s for s in samples if s["method"] == "full"]
    assert sum(s["score"] for s in full) >= 48  # the demo model answers its existence questions
    for row in res["rows"]:
        mine = [s for s in samples if s["method"] == row["method"]]
        b = row["breakdown"]["pope_f1"]
        for split in ("random", "popular", "adversarial"):
            pairs = [(s["prediction"], s["answers"][0]) for s in mine if s["question_type"] == f"pope_{split}"]
            ref = confusion_llava(pairs)
            assert b[split]["TP"] == ref["TP"] and b[split]["yes_ratio"] == round(ref["yes_ratio"], 6)
        f1s = [b[s]["f1"] for s in ("random", "popular", "adversarial")]
        assert row["metrics"]["pope_f1"] == pytest.approx(sum(f1s) / 3, abs=2e-6)
        assert row["metrics"]["pope_accuracy"] == round(sum(s["score"] for s in mine) / 54, 6)


@pytest.mark.parametrize("name, write, corrupt, message", [
    ("pope", write_pope, lambda root: (root / "coco_pope_random.json").write_text("{not json\n"),
     "coco_pope_random.json: line 1: not valid JSON"),
    ("scienceqa_img", write_scienceqa, lambda root: (root / "problems.json").write_text("[1, 2"),
     "problems.json: not valid JSON"),
    ("mme", write_mme, lambda root: (root / "MME_Benchmark_release_version" / "existence" / "000000006040.txt")
     .write_text("Is there a train?\tPerhaps\n"), "answer must be Yes or No, got 'Perhaps'"),
    ("textvqa", write_textvqa, lambda root: (root / "TextVQA_0.5.1_val.json").write_text('{"data": {}}'),
     "expected {'data': [...]} (TextVQA 0.5.1 format)"),
])
def test_malformed_benchmark_data_is_one_line(name, write, corrupt, message, tmp_path, capsys):
    root = write(tmp_path / "data")
    corrupt(root)
    opts = {"mme": {"subtasks": ["existence"]}, "textvqa": {"ocr": True}}.get(name, {})
    suite = variant(tmp_path, name, lambda r: (r["dataset"].update(source=str(root), options=opts),
                                               r["dataset"].update(split="val") if name == "textvqa" else None))
    assert main([str(suite), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {suite}: dataset: ") and message in err
