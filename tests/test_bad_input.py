"""A corpus of bad inputs. Each is refused with exit status 2 and one line on stderr naming the
file (or option) and the field, with no traceback, and leaves an existing run directory (a real
earlier run: predictions.sqlite, results.json, samples.jsonl, run.lock) byte-for-byte unchanged.

The earlier run is the demo model on a small VQA v2 set in the official layout (2 questions);
most cases run `run.main` in-process against that directory; cases whose error can only appear
once the work starts (unreadable images, an over-long question, a full disk) extend the same
run to a third question, whose image or question is the bad one.
"""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.official_data import coco_name, write_vqav2
from robust_atp.lock import RunLock
from robust_atp.run import main
from robust_atp.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

BASE = """
name: bad_input
seed: 0
dataset: {{loader: vqav2, source: "{root}", split: val, limit: 2}}
model: {{checkpoint: "zoo:shapes_vlm/llava", clip: "zoo:shapes_vlm/clip", generation: {{max_new_tokens: 2}}}}
methods:
  - {{name: full}}
  - {{name: atp, keep: 0.25, alpha: 0.5}}
perturbations:
  image: {{corruptions: [fog], severities: [1]}}
metrics: [vqa_accuracy]
batch_size: 1
"""
THIRD_IMAGE = coco_name("val2014", 73)  # the image of the third question (73000), which the earlier run lacks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A VQA v2 root, the suite over it, and a finished run of its first 2 questions."""
    tmp = tmp_path_factory.mktemp("bad_input")
    root = write_vqav2(tmp / "vqa")
    suite = tmp / "suite.yaml"
    suite.write_text(textwrap.dedent(BASE.format(root=root)))
    run = tmp / "run"
    assert main([str(suite), "--out", str(run), "--no-report", "--no-progress"]) == 0
    store = RunStore(run / "predictions.sqlite")
    assert store.count() == 2 * 2 * 2
    store.close()
    return {"tmp": tmp, "root": root, "suite": suite, "run": run}


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def check_refused(capsys, world, argv, where, message):
    before = snapshot(world["run"])
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in captured.err + captured.out, captured.err
    assert err.startswith(f"error: {where}: "), err
    assert message in err, err
    assert snapshot(world["run"]) == before  # no byte of the earlier run changed, no file added


def suite_text(world) -> str:
    return world["suite"].read_text()


def edited(world, tmp_path, edit, name="s.yaml") -> Path:
    p = tmp_path / name
    text = edit(suite_text(world))
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


# (id, edit of the suite text, field and message expected after "error: <suite>: ")
SUITE_CASES = [
    ("malformed_yaml", lambda t: t + "extra: [1, 2\n", "malformed YAML"),
    ("unclosed_quote", lambda t: t.replace("name: bad_input", 'name: "bad_input'), "malformed YAML"),
    ("key_given_twice", lambda t: t + "seed: 1\n", "malformed YAML (key 'seed' given twice)"),
    ("python_object_tag", lambda t: t.replace("name: bad_input", "name: !!python/object/apply:os.getcwd []"),
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.getcwd'"),
    ("empty_file", lambda t: "", "<root>: the suite file is empty"),
    ("not_a_mapping", lambda t: "- full\n- atp\n", "<root>: must be a mapping of suite fields"),
    ("not_utf8", lambda t: t.replace("bad_input", "caf\xe9").encode("latin-1"), "not UTF-8 text"),
    ("unknown_top_key", lambda t: t.replace("dataset:", "datset:"), "datset: unknown key (did you mean 'dataset'?)"),
    ("unknown_nested_key", lambda t: t.replace("checkpoint:", "checkpont:"),
     "model.checkpont: unknown key (did you mean 'checkpoint'?)"),
    ("unknown_block_key", lambda t: t.replace("perturbations:", "perturbation:"),
     "perturbation: unknown key (did you mean 'perturbations'?)"),
    ("unknown_method_setting", lambda t: t.replace("alpha: 0.5", "alhpa: 0.5"),
     "methods[1].alhpa: unknown key (did you mean 'alpha'?)"),
    ("unknown_method", lambda t: t.replace("name: atp", "name: atpp"),
     "methods[1].name: unknown method 'atpp' (did you mean 'atp'?)"),
    ("limit_not_integer", lambda t: t.replace("limit: 2", "limit: two"), "dataset.limit: Input should be a valid integer"),
    ("methods_not_list", lambda t: t.split("methods:")[0] + "methods: full\nbatch_size: 1\n",
     "methods: Input should be a valid list"),
    ("keep_not_number", lambda t: t.replace("keep: 0.25", "keep: half"), "methods[1].keep: Input should be a valid number"),
    ("batch_size_list", lambda t: t.replace("batch_size: 1", "batch_size: [1]"), "batch_size: Input should be a valid integer"),
    ("empty_method_list", lambda t: t.split("methods:")[0] + "methods: []\nbatch_size: 1\n",
     "methods: List should have at least 1 item"),
    ("keep_zero", lambda t: t.replace("keep: 0.25", "keep: 0"), "methods[1].keep: must be in (0, 1], got 0"),
    ("keep_above_one", lambda t: t.replace("keep: 0.25", "keep: 1.5"), "methods[1].keep: must be in (0, 1], got 1.5"),
    ("keep_negative", lambda t: t.replace("keep: 0.25", "keep: -0.25"), "methods[1].keep: must be in (0, 1], got -0.25"),
    ("alpha_above_one", lambda t: t.replace("alpha: 0.5", "alpha: 1.5"), "methods[1].alpha: must be in [0, 1], got 1.5"),
    ("alpha_negative", lambda t: t.replace("alpha: 0.5", "alpha: -0.5"), "methods[1].alpha: must be in [0, 1], got -0.5"),
    ("k_zero", lambda t: t.replace("keep: 0.25", "k: 0"), "methods[1].k: Input should be greater than 0"),
    ("two_budgets", lambda t: t.replace("keep: 0.25", "keep: 0.25, k: 9"), "methods[1]: give exactly one budget"),
    ("severity_zero", lambda t: t.replace("severities: [1]", "severities: [0]"),
     "perturbations.image.severities: severities must be a non-empty list of integers in 1..5"),
    ("unknown_corruption", lambda t: t.replace("[fog]", "[fogg]"),
     "perturbations.image.corruptions[0]: unknown corruption 'fogg' (did you mean 'fog'?)"),
    ("unknown_metric", lambda t: t.replace("[vqa_accuracy]", "[vqa_acc]"), "metrics[0]: unknown metric 'vqa_acc'"),
    ("unknown_loader", lambda t: t.replace("loader: vqav2", "loader: vqa2"), "dataset.loader: unknown loader 'vqa2'"),
    ("unknown_device", lambda t: t.replace("model: {", "model: {device: tpu, "),
     "model.device: must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("unknown_dtype", lambda t: t.replace("model: {", "model: {dtype: float8, "),
     "model.dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
    ("bad_name", lambda t: t.replace("name: bad_input", "name: 'bad input'"), "name: String should match pattern"),
    ("missing_root", lambda t: t.replace('source: "', 'source: "/nonexistent'), "dataset.source: "),
    ("subset_discriminator_unknown", lambda t: t + "stats: {subsets: {difficult: {discriminator: pool@0.25}}}\n",
     "stats.subsets.difficult.discriminator: 'pool@0.25' is not a method label of this suite; labels: full, atp@0.25"),
    ("subset_name_not_identifier", lambda t: t + "stats: {subsets: {difficult-1: {discriminator: atp@0.25}}}\n",
     "stats.subsets: subset name 'difficult-1': must be a simple identifier"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in SUITE_CASES], ids=[c[0] for c in SUITE_CASES])
def test_bad_suite(world, tmp_path, capsys, edit, message):
    path = edited(world, tmp_path, edit)
    check_refused(capsys, world, [str(path), "--out", str(world["run"]), "--no-progress"], path, message)


def copy_root(world, tmp_path) -> Path:
    root = tmp_path / "vqa"
    shutil.copytree(world["root"], root)
    return root


def questions_file(root: Path) -> Path:
    return root / "v2_OpenEnded_mscoco_val2014_questions.json"


def set_question(root: Path, qid: int, text: str) -> None:
    f = questions_file(root)
    data = json.loads(f.read_text(encoding="utf-8"))
    for q in data["questions"]:
        if q["question_id"] == qid:
            q["question"] = text
    f.write_text(json.dumps(data), encoding="utf-8")


# data files broken before the run starts (read when the dataset loads): (id, break(root), message)
DATA_CASES = [
    ("questions_not_utf8", lambda r: questions_file(r).write_bytes(
        questions_file(r).read_bytes().replace("¿Qué".encode(), "¿Qué".encode("latin-1"))), "not UTF-8 text"),
    ("questions_malformed_json", lambda r: questions_file(r).write_text('{"questions": [{"image_id": 42,'),
     "not valid JSON (line 1, column"),
    ("questions_missing", lambda r: questions_file(r).unlink(), "missing v2_OpenEnded_mscoco_val2014_questions.json"),
    ("questions_not_a_list", lambda r: questions_file(r).write_text('{"questions": 7}'), "expected {'questions': [...]}"),
    ("empty_question", lambda r: set_question(r, 73000, "   "), "dataset: example 73000: the question is empty"),
]


@pytest.mark.parametrize("breaks, message", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(world, tmp_path, capsys, breaks, message):
    root = copy_root(world, tmp_path)
    breaks(root)
    path = edited(world, tmp_path, lambda t: t.replace(str(world["root"]), str(root)).replace("limit: 2", "limit: 4"))
    check_refused(capsys, world, [str(path), "--out", str(world["run"]), "--no-progress"], path, message)


def test_a_path_in_a_data_file_stays_inside_its_root(world, tmp_path, capsys):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": [
        {"filepath": "val2014", "filename": "../../../etc/passwd", "imgid": 0, "split": "test", "cocoid": 1,
         "sentences": [{"raw": "a cat on a mat"}]}], "dataset": "coco"}))
    path = edited(world, tmp_path, lambda t: t.replace("loader: vqav2", "loader: coco_captions")
                  .replace(str(world["root"]), str(root)).replace("split: val", "split: test")
                  .replace("[vqa_accuracy]", "[exact_match]"))
    check_refused(capsys, world, [str(path), "--out", str(world["run"]), "--no-progress"], path,
                  "dataset: '../../../etc/passwd': path leaves the dataset root")


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# the third question's image, broken; the run extends the earlier one and meets it in its first unit
IMAGE_CASES = [
    ("image_missing", lambda p: p.unlink(), "no such image file"),
    ("image_zero_bytes", lambda p: p.write_bytes(b""), "an empty (zero-byte) file"),
    ("image_truncated", truncated, "a damaged image (image file is truncated"),
    ("image_not_an_image", lambda p: p.write_text("<html>not a picture</html>"), "not an image file PIL can read"),
]


@pytest.fixture
def third_image(world):
    path = world["root"] / "val2014" / THIRD_IMAGE
    keep = path.read_bytes()
    yield path
    path.write_bytes(keep)


@pytest.mark.parametrize("breaks, message", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_file(world, third_image, capsys, breaks, message):
    breaks(third_image)
    argv = [str(world["suite"]), "--out", str(world["run"]), "--limit", "3", "--no-progress"]
    check_refused(capsys, world, argv, third_image, f"example 73000: {message}")


def test_an_image_too_small_to_corrupt(world, third_image, capsys):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(third_image, format="JPEG")
    argv = [str(world["suite"]), "--out", str(world["run"]), "--limit", "3", "--no-progress"]
    check_refused(capsys, world, argv, world["suite"], "perturbations.image.resolution: example 73000: its image is "
                  "8x8 px, corruptions need at least 32 px a side")


def test_an_over_long_question(world, capsys):
    keep = questions_file(world["root"]).read_bytes()
    try:
        set_question(world["root"], 73000, " ".join(["what"] * 600) + "?")
        argv = [str(world["suite"]), "--out", str(world["run"]), "--limit", "3", "--no-progress"]
        check_refused(capsys, world, argv, world["suite"], "dataset: example 73000: the question and prompt are 6")
    finally:
        questions_file(world["root"]).write_bytes(keep)


def test_k_above_the_visual_tokens(world, tmp_path, capsys):
    path = edited(world, tmp_path, lambda t: t.replace("keep: 0.25", "k: 500"))
    fresh = tmp_path / "fresh"
    check_refused(capsys, world, [str(path), "--out", str(fresh), "--no-progress"], path,
                  "methods[1].k: 500 is more than the 144 visual tokens this model gives an image")
    store = RunStore(fresh / "predictions.sqlite")
    assert store.count() == 0  # the model-side check came before any unit
    store.close()


@pytest.mark.parametrize("out, where, message", [
    ("/proc/robust_atp_run", "/proc/robust_atp_run", "cannot create the run directory"),
    ("/proc", "/proc", "the run directory is not writable"),
])
def test_an_output_directory_that_is_not_writable(world, capsys, out, where, message):
    check_refused(capsys, world, [str(world["suite"]), "--out", out, "--no-progress"], where, message)


def test_an_output_path_that_is_a_file(world, capsys):
    out = world["run"] / "results.json"
    check_refused(capsys, world, [str(world["suite"]), "--out", str(out)], out, "exists and is not a directory")


@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--batch-size", "-2")])
def test_bad_command_line_numbers(world, capsys, flag, value):
    check_refused(capsys, world, [str(world["suite"]), "--out", str(world["run"]), flag, value], flag,
                  f"must be a positive integer, got {value}")


def test_another_suite_into_the_run_directory(world, tmp_path, capsys):
    path = edited(world, tmp_path, lambda t: t.replace("seed: 0", "seed: 1"))
    check_refused(capsys, world, [str(path), "--out", str(world["run"])], world["run"],
                  "holds a run of suite 'bad_input'")


def test_a_run_directory_in_use(world, capsys):
    with RunLock(world["run"]):
        check_refused(capsys, world, [str(world["suite"]), "--out", str(world["run"]), "--limit", "3"],
                      world["run"], f"in use by another run (pid {os.getpid()} ")


def test_a_full_disk_while_writing_predictions_keeps_whole_units_only(world, capsys, monkeypatch):
    """The disk fills up inside the first unit's transaction, after its rows were inserted:
    SQLite's error rolls the unit back whole and the store stays as it was (test_store checks a
    real SQLITE_FULL from max_page_count)."""
    insert = RunStore._insert

    def insert_then_full(self, rows):
        insert(self, rows)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(RunStore, "_insert", insert_then_full)
    argv = [str(world["suite"]), "--out", str(world["run"]), "--limit", "4", "--no-progress"]
    check_refused(capsys, world, argv, world["run"] / "predictions.sqlite",
                  "cannot write (database or disk is full); the units committed before are kept")


def test_a_full_disk_while_writing_results_leaves_the_old_file(world, capsys, monkeypatch):
    write_text = Path.write_text

    def full(self, *a, **k):
        if self.name.endswith(".tmp"):
            write_text(self, "{\"half\": ", encoding="utf-8")  # a partial write, then the disk is full
            raise OSError(28, "No space left on device")
        return write_text(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    argv = [str(world["suite"]), "--out", str(world["run"]), "--no-progress", "--no-report"]
    check_refused(capsys, world, argv, world["run"] / "results.json", "cannot write (No space left on device)")


# ----------------------------------------------------------------------------- through a process

@pytest.mark.parametrize("case", ["yaml", "image"])
def test_no_traceback_reaches_stderr(world, tmp_path, third_image, case):
    marker = tmp_path / "ran"
    if case == "yaml":  # a Python object tag must neither load nor run
        path = edited(world, tmp_path, lambda t: t.replace(
            "name: bad_input", f"name: !!python/object/apply:os.system ['touch {marker}']"))
        argv, extra = [str(path), "--out", str(world["run"])], "could not determine a constructor"
    else:
        third_image.write_bytes(b"")
        argv, extra = [str(world["suite"]), "--out", str(world["run"]), "--limit", "3"], "an empty (zero-byte) file"
    before = snapshot(world["run"])
    r = subprocess.run([sys.executable, "-m", "robust_atp.run", *argv, "--no-progress"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and extra in lines[0], r.stderr
    assert snapshot(world["run"]) == before and not marker.exists()


def test_the_earlier_run_still_resumes_cleanly(world, tmp_path):
    """After the whole corpus, the untouched run extends to the third question without complaint."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    assert main([str(world["suite"]), "--out", str(run), "--limit", "3", "--no-progress", "--no-report"]) == 0
    con = sqlite3.connect(run / "predictions.sqlite")
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 3 * 2 * 2
    con.close()
