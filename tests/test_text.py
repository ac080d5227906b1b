"""Question perturbations: registry and presets, cross-process determinism, graded strength,
meaning-keeping paraphrases, WordNet from Debian's files."""
import difflib
import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from robust_atp.errors import SuiteError
from robust_atp.perturb.image import condition_seed, load_preset
from robust_atp.perturb.paraphrase import question_type
from robust_atp.perturb.text import (TEXT_PERTURBATIONS, TextCondition, detokenize, perturb_text, split_tail,
                                     tokenize)

CHAR = ["keyboard", "ocr", "char_insert", "char_substitute", "char_swap", "char_delete"]
WORD = ["spelling", "word_swap", "word_delete", "synonym"]
TEMPLATE = ["paraphrase", "distractor"]
N_QUESTIONS = 120
N_SUBPROCESS = 30

_DIGEST = """
import hashlib, json, sys
from robust_atp.data import shapes
from robust_atp.perturb.image import condition_seed
from robust_atp.perturb.text import TEXT_PERTURBATIONS, TextCondition, perturb_text
exs = shapes.load_shapes("test", limit=int(sys.argv[1]))
names = sorted(TEXT_PERTURBATIONS)
if sys.argv[2] == "reversed":
    names.reverse(); exs = exs[::-1]
out = {}
for name in names:
    for sev in range(1, 6):
        c = TextCondition(name, sev)
        for ex in exs:
            out[f"{ex.id}|{c.name}"] = perturb_text(ex.question, c, condition_seed(0, ex.id, c.name))
print(hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest())
"""


@pytest.fixture(scope="module")
def questions(shapes_examples):
    from robust_atp.data import shapes

    return shapes.load_shapes("test", limit=N_QUESTIONS)


@pytest.fixture(scope="module")
def perturbed(questions):
    out = {}
    for name in TEXT_PERTURBATIONS:
        for sev in range(1, 6):
            c = TextCondition(name, sev)
            for ex in questions:
                out[f"{ex.id}|{c.name}"] = perturb_text(ex.question, c, condition_seed(0, ex.id, c.name))
    return out


def test_registry_and_presets():
    assert sorted(TEXT_PERTURBATIONS) == sorted(CHAR + WORD + TEMPLATE)
    assert load_preset("text_char", "perturbations")["perturbations"] == CHAR
    assert load_preset("text_word", "perturbations")["perturbations"] == WORD
    assert load_preset("text_paraphrase", "perturbations")["perturbations"] == TEMPLATE


@pytest.mark.slow
def test_byte_identical_across_processes_hash_seeds_and_orders(perturbed, questions):
    ids = {ex.id for ex in questions[:N_SUBPROCESS]}
    mine = {k: v for k, v in perturbed.items() if k.split("|")[0] in ids}
    mine = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()
    procs = [subprocess.Popen([sys.executable, "-c", _DIGEST, str(N_SUBPROCESS), order], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONHASHSEED": hs})
             for order, hs in (("forward", "1"), ("reversed", "2"))]
    digests = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert digests == [mine, mine]


def test_depends_on_seed_only_and_leaks_no_global_state(questions):
    q = questions[0].question
    random.seed(5)
    np.random.seed(5)
    before = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    for name in TEXT_PERTURBATIONS:
        c = TextCondition(name, 3)
        assert perturb_text(q, c, 42) == perturb_text(q, c, 42), name
    assert (random.random(), np.random.random()) == before
    for name in CHAR + ["spelling", "word_swap", "paraphrase", "distractor"]:
        outs = {perturb_text(ex.question, TextCondition(name, 3), 7) for ex in questions[:20]}
        seeds = {perturb_text(questions[1].question, TextCondition(name, 5), s) for s in range(8)}
        assert len(outs) > 1 and len(seeds) > 1, name


def change_rates(perturbed, questions, name, sev):
    key = TextCondition(name, sev).name
    outs = [(ex.question, perturbed[f"{ex.id}|{key}"]) for ex in questions]
    changed = sum(a != b for a, b in outs) / len(outs)
    distance = sum(1 - difflib.SequenceMatcher(None, a, b).ratio() for a, b in outs) / len(outs)
    return changed, distance


@pytest.mark.parametrize("name", CHAR + WORD + TEMPLATE)
def test_severity_1_changes_90_percent_and_severity_5_changes_more(perturbed, questions, name):
    changed1, dist1 = change_rates(perturbed, questions, name, 1)
    changed5, dist5 = change_rates(perturbed, questions, name, 5)
    assert changed1 >= 0.9, (name, changed1)
    assert dist5 > dist1, (name, dist1, dist5)


def test_closing_punctuation_kept_and_tokens_round_trip(perturbed, questions):
    for ex in questions:
        body, tail = split_tail(ex.question)
        assert tail == "?" and detokenize(tokenize(body)) == body
    for q in ["What's the man holding, in his left hand?", "Is this a t-shirt (or a jumper)?"]:
        assert detokenize(tokenize(split_tail(q)[0])) == split_tail(q)[0]
    for key, out in perturbed.items():
        if "distractor" not in key:
            assert out.endswith(("?", ".")), key


def test_every_shapes_question_type_has_its_own_template(questions):
    from robust_atp.data import shapes

    seen = set()
    for qtype in shapes.QUESTION_TYPES:
        exs = [ex for i in range(200) if (ex := _typed(qtype, i)) is not None][:25]
        assert exs, qtype
        for ex in exs:
            assert question_type(ex.question) == qtype, ex.question
            words = set(split_tail(ex.question)[0].split()) - {"what", "is", "the", "how", "are", "there", "or",
                                                                  "color", "shape", "many", "object", "objects",
                                                                  "on", "at"}
            for sev in range(1, 6):
                out = perturb_text(ex.question, TextCondition("paraphrase", sev), sev)
                assert out != ex.question and question_type(out) != qtype or sev == 1, (qtype, sev, out)
                assert words <= set(out.rstrip("?.").replace(",", "").replace(":", "").split()), (ex.question, out)
        seen.add(qtype)
    assert seen == set(shapes.QUESTION_TYPES)


def _typed(qtype, i):
    from robust_atp.data import shapes

    try:
        return shapes.make_example(0, "test", i, types=(qtype,))
    except ValueError:
        return None


def test_generic_paraphrase_and_distractor_on_free_form_questions():
    q = "What is the man holding in his left hand?"
    assert question_type(q) is None
    outs = [perturb_text(q, TextCondition("paraphrase", s), 1) for s in range(1, 6)]
    for out in outs:
        assert out != q and "the man holding in his left hand?" in out and out[0].isupper()
    assert len(outs[4]) > len(outs[0])
    for s in range(1, 6):
        out = perturb_text("what color is the circle?", TextCondition("distractor", s), 3)
        assert out.startswith("what color is the circle? ")
        assert "circle" not in out[len("what color is the circle?"):]


def test_synonyms_come_from_debians_wordnet():
    from robust_atp.perturb.wordnet import synonyms

    assert "colour" in synonyms("color")
    assert "physical objects" in synonyms("objects")
    assert synonyms("the") == () and synonyms("xqzzy") == ()


def test_missing_wordnet_names_the_debian_package(monkeypatch, tmp_path):
    from robust_atp.perturb import wordnet
    from robust_atp.perturb.text import resolve_text_conditions
    from robust_atp.suite import TextPerturbCfg

    monkeypatch.setenv("ROBUST_ATP_WORDNET", str(tmp_path))
    with pytest.raises(SuiteError, match="wordnet-base"):
        wordnet.check_installed()
    with pytest.raises(SuiteError, match=r"^\.preset: .*install Debian's 'wordnet-base'"):
        resolve_text_conditions(TextPerturbCfg(preset="text_word"))
    assert len(resolve_text_conditions(TextPerturbCfg(preset="text_char", severities=[1, 5]))) == 12
