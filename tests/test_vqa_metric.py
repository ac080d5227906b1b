"""VQA accuracy conventions, rule by rule: lmms-eval's VQAv2 (`vqa_accuracy`), GT-Vision-Lab's
current vqaEval.py under Python 2.7 (`vqa_accuracy_official`) and lmms-eval's TextVQA / VizWiz
(`textvqa_accuracy`).

Expected values are worked out by hand from the reference code (see robust_atp/metrics/vqa.py,
vqa_rules.py, textvqa.py); every accuracy row was also checked against the reference scripts
themselves run on the same strings. With h of 10 references matching: h=0 -> 0, 1 -> 0.3,
2 -> 0.6, 3 -> 0.9, >=4 -> 1.
"""
import itertools
import random

import pytest

from robust_atp.metrics import METRICS, score_all
from robust_atp.metrics.textvqa import textvqa_accuracy
from robust_atp.metrics.vqa import vqa_accuracy, vqa_accuracy_official
from robust_atp.metrics.vqa_rules import (CONTRACTIONS, evalai_digit_article, evalai_process, evalai_punctuation,
                                          official_digit_article, official_punctuation, py2_lower)

TEN = 10

# (text, lmms-eval process_punctuation, vqaEval.py processPunctuation)
PUNCTUATION = [
    ("yes", "yes", "yes"),
    ("yes.", "yes", "yes"),                          # a period not followed by a digit goes
    ("3.5", "3.5", "3.5"),                           # a decimal point stays
    ("3.", "3", "3"),
    ("5..", "5", "5"),                               # repeated periods: each goes
    ("...", "", ""),
    (".5", ".5", ".5"),
    ("1.5.", "1.5", "1.5"),
    ("3.14.15", "3.14.15", "3.14.15"),
    ("e.g.", "eg", "eg"),
    ("U.S.A.", "USA", "USA"),
    ("." * 40, "." * 8, "." * 8),                    # re.UNICODE passed as the count: 32 periods at most
    ("red,white", "red white", "red white"),         # a mark touching no space: a space
    ("red, white", "red white", "red white"),        # touching a space anywhere: deleted
    ("hello?", "hello ", "hello "),
    ("hello ?", "hello ", "hello "),
    ("yes!", "yes ", "yes "),                        # "!" is in the list
    ("t-shirt", "t shirt", "t shirt"),               # so is "-"
    ("{z}", " z ", " z "),                           # and braces
    ("(1, 2)", " 1 2 ", " 1 2 "),                    # ", " anywhere: "," deleted; "(" and ")" touch no space
    ("a/b", "a b", "a b"),
    ("a / b", "a  b", "a  b"),
    ("don't", "don't", "don't"),                     # the apostrophe is not
    ("a:b", "a:b", "a:b"),                           # nor the colon
    ("isn’t", "isn’t", "isn’t"),                     # nor the typographic apostrophe
    ("1,000", "1000", "1000"),                       # digit,digit: every mark is deleted
    ("2,3 apples, 4", "23 apples 4", "23 apples 4"),
    ("a,b 1,2", "ab 12", "ab 12"),                   # one digit,digit anywhere deletes every comma
    ("x(1,2)", "x12", "x12"),
    ("1,,000", "1000", "1  000"),                    # lmms-eval: a comma run; vqaEval.py: exactly one comma
    ("１,０００", "１０００", "１ ０００"),               # full-width digits: \d in Python 3, not 2
    ("３.", "３", "３"),
    ("1.５", "1.５", "1５"),                           # Python 2 sees no digit after the period
]

# (text, lmms-eval process_digit_article, vqaEval.py processDigitArticle)
DIGIT_ARTICLE = [
    ("Two", "2", "2"),
    ("two dogs", "2 dogs", "2 dogs"),
    ("one of two", "1 of 2", "1 of 2"),              # number words inside phrases
    ("someone", "someone", "someone"),
    ("none", "0", "0"),
    ("zero", "0", "0"),
    ("ten", "10", "10"),
    ("eleven", "eleven", "eleven"),
    ("threes", "threes", "threes"),
    ("a dog", "dog", "dog"),
    ("The Dog", "dog", "dog"),
    ("an apple", "apple", "apple"),
    ("A", "", ""),
    ("a lot of the time", "lot of time", "lot of time"),
    ("  many \r  spaces\n", "many spaces", "many spaces"),
    ("dont", "don't", "don't"),                      # ASCII apostrophes in the current table
    ("isnt", "isn't", "isn't"),
    ("whats", "what's", "what's"),
    ("he'dve", "he'd've", "he'd've"),                # keys with apostrophes match: "'" is never stripped
    ("somebody'd", "somebodyd", "somebodyd"),        # the table's one backwards entry
    ("twas", "'twas", "'twas"),
    ("Im", "im", "im"),                              # keys with capitals never match: words are lower-cased first
    ("isn’t", "isn’t", "isn’t"),
    ("İstanbul", "i̇stanbul", "istanbul"),            # Python 3's full case mapping vs Python 2's simple one
    ("ΟΔΟΣ", "οδος", "οδοσ"),                        # Python 3's final sigma
    ("x\u180ey", "x\u180ey", "x y"),                 # U+180E is whitespace in Python 2 only
    ("café CAFÉ", "café café", "café café"),
]

# (text, lmms-eval EvalAIAnswerProcessor(...), the TextVQA / VizWiz path)
EVALAI_PROCESS = [
    ("Dog's", "dog 's"),                             # "'s" split off
    ("it's", "it 's"),
    ("let's", "let 's"),
    ("what's?", "what 's"),
    ("1,000", "1000"),                               # commas deleted first
    ("1,,000", "1000"),
    ("Hello, World?", "hello world"),
    ("\n yes \t", "yes"),
    ("Two Dogs.", "2 dogs"),
    ("t-shirt!", "t shirt"),
    ("The U.S.A.", "usa"),
]

# (prediction, references, vqa_accuracy, vqa_accuracy_official, textvqa_accuracy)
ACCURACY = [
    ("yes", ["yes"] * TEN, 1.0, 1.0, 1.0),
    ("no", ["yes"] * TEN, 0.0, 0.0, 0.0),
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9, 0.9, 0.9),
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6, 0.6, 0.6),
    ("yes", ["yes"] + ["no"] * 9, 0.3, 0.3, 0.3),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0, 1.0, 1.0),
    # case: official compares a unanimous question's raw strings
    ("Yes", ["yes"] * TEN, 1.0, 0.0, 1.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0, 1.0, 1.0),
    ("yes", ["Yes"] * TEN, 1.0, 0.0, 1.0),
    ("yes", ["Yes"] * 8 + ["yes"] * 2, 1.0, 1.0, 1.0),
    ("yes.", ["yes"] * TEN, 1.0, 0.0, 1.0),
    ("Yes.", ["yes"] * 3 + ["no"] * 7, 0.9, 0.9, 0.9),
    # whitespace: \n and \t become spaces, then strip (on both sides, before the unanimity test)
    ("\nyes\t", ["yes"] * TEN, 1.0, 1.0, 1.0),
    ("  yes  ", ["yes"] * TEN, 1.0, 1.0, 1.0),
    ("yes", ["yes "] + ["yes"] * 9, 1.0, 1.0, 1.0),
    ("yes", ["yes\n"] * TEN, 1.0, 1.0, 1.0),
    ("red\rwhite", ["red white"] * TEN, 1.0, 0.0, 1.0),    # \r is only split on, in the digit / article step
    ("red\rwhite", ["red white"] * 5 + ["blue"] * 5, 1.0, 1.0, 1.0),
    ("red\twhite", ["red white"] * TEN, 1.0, 1.0, 1.0),
    ("yes\r", ["yes"] * TEN, 1.0, 1.0, 1.0),               # strip removes it
    # number words
    ("two", ["2"] * TEN, 1.0, 0.0, 1.0),
    ("2", ["two"] * TEN, 1.0, 0.0, 1.0),
    ("2", ["two"] * 5 + ["2"] * 5, 1.0, 1.0, 1.0),
    ("two", ["2"] * 3 + ["3"] * 7, 0.9, 0.9, 0.9),
    ("2 dogs", ["two dogs"] * TEN, 1.0, 0.0, 1.0),
    ("two dogs", ["2 dogs"] * 4 + ["dogs"] * 6, 1.0, 1.0, 1.0),
    ("ten-four", ["10 4"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("eleven", ["11"] * TEN, 0.0, 0.0, 0.0),
    ("none", ["0"] * 5 + ["1"] * 5, 1.0, 1.0, 1.0),
    ("one", ["1", "2", "3", "1", "1", "one", "one", "2", "2", "2"], 1.0, 1.0, 1.0),
    # articles
    ("dog", ["a dog"] * TEN, 1.0, 0.0, 1.0),
    ("a dog", ["dog"] * TEN, 1.0, 0.0, 1.0),
    ("the dog", ["dog"] * 4 + ["cat"] * 6, 1.0, 1.0, 1.0),
    ("apple", ["an apple"] * 3 + ["apple"] * 2 + ["orange"] * 5, 1.0, 1.0, 1.0),
    ("a", ["a"] * TEN, 1.0, 1.0, 1.0),
    ("the", ["a"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),         # both normalise to ""
    ("a", [str(i) for i in range(9)] + ["a"], 0.3, 0.3, 0.3),
    # contractions
    ("dont", ["don't"] * TEN, 1.0, 0.0, 1.0),
    ("dont", ["don't"] * 9 + ["no"], 1.0, 1.0, 1.0),
    ("don't", ["dont"] * 5 + ["no"] * 5, 1.0, 1.0, 1.0),
    ("don’t", ["don't"] * 9 + ["no"], 0.0, 0.0, 0.0),     # the typographic apostrophe is not normalised
    ("isn’t", ["isnt"] * 5 + ["no"] * 5, 0.0, 0.0, 0.0),
    ("whats", ["what's"] * 5 + ["x"] * 5, 1.0, 1.0, 0.0),  # TextVQA: "what 's" vs "what's"
    ("Dog's", ["dog's"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("dog's", ["dogs"] * 5 + ["x"] * 5, 0.0, 0.0, 0.0),
    ("its", ["it's"] * TEN, 0.0, 0.0, 0.0),
    ("It's sunny", ["it's sunny"] * 4 + ["sunny"] * 6, 1.0, 1.0, 1.0),
    # punctuation, digits next to it, repeated periods
    ("1,000", ["1000"] * TEN, 1.0, 0.0, 1.0),
    ("1000", ["1,000"] * 5 + ["1000"] * 5, 1.0, 1.0, 1.0),
    ("1,,000", ["1000"] * 5 + ["x"] * 5, 1.0, 0.0, 1.0),
    ("3.5", ["3.5"] * TEN, 1.0, 1.0, 1.0),
    ("3.", ["3"] * 5 + ["4"] * 5, 1.0, 1.0, 1.0),
    ("3.5.", ["3.5"] * 5 + ["4"] * 5, 1.0, 1.0, 1.0),
    ("yes...", ["yes"] * 5 + ["no"] * 5, 1.0, 1.0, 1.0),
    ("yes" + "." * 40, ["yes"] * 5 + ["no"] * 5, 0.0, 0.0, 0.0),  # 8 periods survive
    ("red, white", ["red white"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("red,white", ["red white"] * TEN, 1.0, 0.0, 0.0),   # TextVQA deletes commas first: "redwhite"
    ("1,5", ["15"] * 3 + ["1 5"] * 7, 0.9, 0.9, 0.9),
    ("3, 4", ["3 4"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("3,4", ["3 4"] * 5 + ["x"] * 5, 0.0, 0.0, 0.0),       # digit,digit: the comma is deleted, "34"
    ("t-shirt", ["t shirt"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("t-shirt", ["t-shirt"] * TEN, 1.0, 1.0, 1.0),
    ("yes!", ["yes"] * 5 + ["no"] * 5, 1.0, 1.0, 1.0),
    ("a:b", ["a b"] * 5 + ["x"] * 5, 0.0, 0.0, 0.0),
    ("hello?", ["hello"] * TEN, 1.0, 0.0, 1.0),
    ("U.S.A.", ["usa"] * 5 + ["uk"] * 5, 1.0, 1.0, 1.0),
    ("blue/white", ["blue white"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    # non-ASCII
    ("Café", ["café"] * 5 + ["x"] * 5, 1.0, 1.0, 1.0),
    ("CAFÉ", ["café"] * TEN, 1.0, 0.0, 1.0),
    ("cafe", ["café"] * 5 + ["x"] * 5, 0.0, 0.0, 0.0),
    ("İstanbul", ["istanbul"] * 5 + ["x"] * 5, 0.0, 1.0, 0.0),
    ("１,０００", ["１０００"] * 5 + ["x"] * 5, 1.0, 0.0, 1.0),
    ("日本", ["日本"] * TEN, 1.0, 1.0, 1.0),
    # scores between 0 and 1, few references
    ("cat", ["cat", "cat"] + ["dog"] * 8, 0.6, 0.6, 0.6),
    ("left", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 0.6, 0.6, 0.6),
    ("center", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 1.0, 1.0, 1.0),
    ("1", [str(i) for i in range(10)], 0.3, 0.3, 0.3),
    ("yes", ["yes"], 0.0, 0.0, 0.0),                       # one reference: leaving it out leaves no match
    ("yes", ["yes"] * 3, 2 / 3, 2 / 3, 2 / 3),
    ("yes", [], 0.0, 0.0, 0.0),
    ("", ["yes"] * TEN, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("text, lmms, official", PUNCTUATION)
def test_punctuation_step(text, lmms, official):
    assert evalai_punctuation(text) == lmms
    assert official_punctuation(text) == official


@pytest.mark.parametrize("text, lmms, official", DIGIT_ARTICLE)
def test_digit_article_step(text, lmms, official):
    assert evalai_digit_article(text) == lmms
    assert official_digit_article(text) == official


@pytest.mark.parametrize("text, expected", EVALAI_PROCESS)
def test_evalai_processor(text, expected):
    assert evalai_process(text) == expected


@pytest.mark.parametrize("pred, refs, lmms, official, textvqa", ACCURACY)
def test_accuracy_conventions(pred, refs, lmms, official, textvqa):
    assert vqa_accuracy(pred, tuple(refs)) == pytest.approx(lmms, abs=1e-12)
    assert vqa_accuracy_official(pred, list(refs)) == pytest.approx(official, abs=1e-12)
    assert textvqa_accuracy(pred, tuple(refs)) == pytest.approx(textvqa, abs=1e-12)
    for name, want in (("vqa_accuracy", lmms), ("vqa_accuracy_official", official), ("textvqa_accuracy", textvqa)):
        assert METRICS[name](pred, tuple(refs)) == pytest.approx(want, abs=1e-12)


def test_case_count():
    assert len(PUNCTUATION) + len(DIGIT_ARTICLE) + len(EVALAI_PROCESS) + 3 * len(ACCURACY) >= 250


def test_contraction_table():
    assert len(CONTRACTIONS) == 120
    assert all("’" not in k + v for k, v in CONTRACTIONS.items())
    assert CONTRACTIONS["wouldnt've"] == "wouldn't've" and CONTRACTIONS["y'all'dve"] == "y'all'd've"


def test_python2_lower_is_per_character():
    assert py2_lower("ΟΔΟΣ ΑΣ") == "οδοσ ασ" and "ΟΔΟΣ".lower() == "οδος"
    assert py2_lower("İ") == "i" and len("İ".lower()) == 2


def test_score_all_and_means():
    scores = score_all(["vqa_accuracy", "vqa_accuracy_official", "textvqa_accuracy"], "2", ("two",) * 10)
    assert scores == {"vqa_accuracy": 1.0, "vqa_accuracy_official": 0.0, "textvqa_accuracy": 1.0}
    # vqaEval.py sums the ten values as floats; lmms-eval takes statistics.mean (exact, then rounded once)
    refs = ["a b"] * 1 + ["x"] * 9
    assert vqa_accuracy_official("a b", refs) == sum([0.0] + [1 / 3] * 9) / 10
    assert type(vqa_accuracy("a b", refs)) is float


def test_leave_one_out_is_the_ten_choose_nine_average():
    """The closed form equals the literal average over the 10 subsets of 9 annotators."""
    rng = random.Random(0)
    pool = ["yes", "no", "2", "two", "a dog", "dog", "red"]
    for _ in range(200):
        refs = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool)
        norm = [evalai_digit_article(evalai_punctuation(r)) for r in refs]
        p = evalai_digit_article(evalai_punctuation(pred))
        literal = sum(min(1, sum(r == p for r in sub) / 3) for sub in itertools.combinations(norm, 9)) / 10
        assert vqa_accuracy(pred, tuple(refs)) == pytest.approx(literal)
