"""The demo model's training script, at toy scale: it runs, is seeded, and writes a VLM the adapter loads."""
import json

from robust_atp.engine import kept_tokens_of
from robust_atp.models.zoo import train_shapes
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg

TOY = ["--pool", "48", "--clip-steps", "2", "--clip-batch", "8", "--lm-steps", "2", "--lm-batch", "4",
       "--questions-per-image", "2", "--val", "8", "--no-eval", "--threads", "1"]


def test_toy_training_is_seeded_and_loads_through_the_adapter(tmp_path, shapes_examples, make_adapter):
    for run in ("a", "b"):
        assert train_shapes.main(["--out", str(tmp_path / run), *TOY]) == 0
    for part in ("llava", "clip"):
        a = (tmp_path / "a" / part / "model.safetensors").read_bytes()
        assert a == (tmp_path / "b" / part / "model.safetensors").read_bytes(), part  # same seed, same weights
    meta = json.loads((tmp_path / "a" / "training.json").read_text())
    assert meta["seed"] == 0 and meta["args"]["lm_steps"] == 2 and meta["command"].endswith("--threads 1")
    assert set(meta["val_first_token_accuracy"]) >= {"all", "color"}

    adapter = make_adapter(tmp_path / "a" / "llava", tmp_path / "a" / "clip", max_new_tokens=2)
    assert adapter.num_visual_tokens == 144
    vision = adapter.encode_images([e.image() for e in shapes_examples[:2]])
    questions = [e.question for e in shapes_examples[:2]]
    atp = validate_method(MethodCfg(name="atp", keep=0.25))
    answers = adapter.generate(kept_tokens_of(atp, vision, adapter.encode_texts(questions), ["a", "b"]), questions)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
