"""The official VQA accuracy: every normalisation rule of vqaEval.py, both conventions.

Expected values are computed by hand from the rules (see robust_atp/metrics/vqa.py): for
reference i, min(1, matches among the other references / 3), averaged over the references.
With h matching references out of 10: h=0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1.
"""
import pytest

from robust_atp.metrics import METRICS, score_all
from robust_atp.metrics.vqa import (normalize_prediction, normalize_references, process_digit_article,
                                    process_punctuation, vqa_accuracy, vqa_accuracy_official)

PUNCTUATION = [
    ("yes", "yes"),
    ("yes.", "yes"),                       # a period not followed by a digit goes
    ("3.5", "3.5"),                        # a decimal point stays
    ("3.", "3"),
    ("3.14.15", "3.14.15"),
    ("5..", "5"),
    ("...", ""),
    ("mr. smith", "mr smith"),
    ("e.g.", "eg"),
    ("U.S.A.", "USA"),
    ("a. b", "a b"),
    ("1,000", "1000"),                     # digit,digit: every listed mark is deleted
    ("1,000,000", "1000000"),
    ("1,000 people?", "1000 people"),
    ("2,3 apples, 4", "23 apples 4"),
    ("red,white", "red white"),            # no space around it: replaced by a space
    ("red, white", "red white"),           # touching a space: deleted
    ("don't", "don t"),
    ("it's 3.5 m.", "it s 3.5 m"),
    ("hello?", "hello "),
    ("hello ?", "hello "),
    ("a/b", "a b"),
    ("a / b", "a  b"),
    ("(yes)", " yes "),
    ("[x]", " x "),
    ('"quote"', " quote "),
    ("@home", " home"),
    ("back_pack", "back pack"),
    ("a+b", "a b"),
    ("x=y", "x y"),
    ("<3", " 3"),
    ("a>b", "a b"),
    ("a\\b", "a b"),
    ("`x`", " x "),
    ("a:b", "a b"),
    ("a: b", "a b"),
    ("a;b", "a b"),
    ("t-shirt", "t-shirt"),                # hyphen is not in the list
    ("yes!", "yes!"),                      # nor is the exclamation mark
    ("isn’t", "isn’t"),                    # nor the typographic apostrophe
    ("." * 40, "." * 8),                   # at most 32 periods go (re.UNICODE passed as the count)
    ("a,b 1,2", "ab 12"),                  # one digit,digit group anywhere deletes every comma
    ("(1, 2)", " 1 2 "),                   # ", " anywhere: "," deleted; the parens touch no space: spaced
]

DIGIT_ARTICLE = [
    ("Two", "2"),
    ("two dogs", "2 dogs"),
    ("none", "0"),
    ("zero", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),
    ("one two three", "1 2 3"),
    ("threes", "threes"),
    ("a dog", "dog"),
    ("the dog", "dog"),
    ("an apple", "apple"),
    ("The Dog", "dog"),
    ("A", ""),
    ("a lot of the time", "lot of time"),
    ("  many   spaces ", "many spaces"),
    ("dont", "don’t"),
    ("isnt", "isn’t"),
    ("whats", "what’s"),
    ("weve", "we've"),                     # the table's few ASCII apostrophes are kept as released
    ("cant", "can't"),
    ("Im", "im"),                          # keys with capitals never match: words are lower-cased first
    ("oclock", "o’clock"),
    ("yall", "y’all"),
]

TEN = 10
# (prediction, references, EvalAI convention, official convention)
ACCURACY = [
    ("yes", ["yes"] * TEN, 1.0, 1.0),
    ("no", ["yes"] * TEN, 0.0, 0.0),
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9, 0.9),
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6, 0.6),
    ("yes", ["yes"] + ["no"] * 9, 0.3, 0.3),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0, 1.0),
    ("Yes", ["yes"] * 3 + ["no"] * 7, 0.9, 0.9),
    ("Yes.", ["yes"] * 3 + ["no"] * 7, 0.9, 0.9),
    ("two", ["2"] * TEN, 1.0, 1.0),
    ("2", ["two"] * TEN, 1.0, 0.0),                   # official: identical references stay raw
    ("2", ["two"] * 5 + ["2"] * 5, 1.0, 1.0),
    ("two", ["two"] * 3 + ["three"] * 7, 0.9, 0.0),   # official: disagreeing refs get punctuation only
    ("dog", ["a dog"] * TEN, 1.0, 0.0),
    ("a dog", ["dog"] * TEN, 1.0, 1.0),
    ("the dog", ["dog"] * 4 + ["cat"] * 6, 1.0, 1.0),
    ("dog", ["the dog"] * 4 + ["cat"] * 6, 1.0, 0.0),
    ("dont", ["dont"] * TEN, 1.0, 0.0),
    ("don't", ["don't"] * TEN, 1.0, 0.0),
    ("don't", ["don't"] * 9 + ["no"], 1.0, 1.0),
    ("1,000", ["1000"] * TEN, 1.0, 1.0),
    ("1000", ["1,000"] * TEN, 1.0, 0.0),
    ("1000", ["1,000"] * 5 + ["1000"] * 5, 1.0, 1.0),
    ("3.5", ["3.5"] * TEN, 1.0, 1.0),
    ("3.", ["3"] * TEN, 1.0, 1.0),
    ("red, white", ["red white"] * TEN, 1.0, 1.0),
    ("red,white", ["red white"] * TEN, 1.0, 1.0),
    ("red and white", ["red white"] * TEN, 0.0, 0.0),
    ("\nyes\t", ["yes"] * TEN, 1.0, 1.0),
    ("  yes  ", ["yes"] * TEN, 1.0, 1.0),
    ("yes!", ["yes"] * TEN, 0.0, 0.0),
    ("t-shirt", ["t shirt"] * TEN, 0.0, 0.0),
    ("T-Shirt", ["t-shirt"] * TEN, 1.0, 1.0),
    ("", ["yes"] * TEN, 0.0, 0.0),
    ("yes", [], 0.0, 0.0),
    ("yes", ["yes"], 0.0, 0.0),                       # one reference: leaving it out leaves no match
    ("yes", ["yes"] * 3, 2 / 3, 2 / 3),
    ("yes", ["yes"] * 4, 1.0, 1.0),
    ("none", ["0"] * TEN, 1.0, 1.0),
    ("zero", ["none"] * TEN, 1.0, 0.0),
    ("ten", ["10"] * TEN, 1.0, 1.0),
    ("eleven", ["11"] * TEN, 0.0, 0.0),
    ("an apple", ["apple"] * 6 + ["orange"] * 4, 1.0, 1.0),
    ("apple", ["an apple"] * 3 + ["apple"] * 2 + ["orange"] * 5, 1.0, 0.6),
    ("Im", ["im"] * TEN, 1.0, 1.0),
    ("2 dogs", ["two dogs"] * TEN, 1.0, 0.0),
    ("yes", ["Yes"] * TEN, 1.0, 0.0),
    ("yes", ["Yes"] * 5 + ["yes"] * 5, 1.0, 1.0),
    ("yes", ["Yes"] * 8 + ["yes"] * 2, 1.0, 0.6),
    ("hello?", ["hello"] * TEN, 1.0, 1.0),
    ("mr. smith", ["mr smith"] * TEN, 1.0, 1.0),
    ("U.S.A.", ["usa"] * TEN, 1.0, 1.0),
    ("a", ["a"] * TEN, 1.0, 0.0),                     # both sides normalise to the empty string
    ("the", ["yes"] * TEN, 0.0, 0.0),
    ("blue/white", ["blue white"] * TEN, 1.0, 1.0),
    ("blue / white", ["blue white"] * TEN, 1.0, 1.0),
    ("3,4", ["34"] * TEN, 1.0, 1.0),
    ("3, 4", ["3 4"] * TEN, 1.0, 1.0),
    ("left", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 0.6, 0.6),
    ("right", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 0.6, 0.6),
    ("center", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 1.0, 1.0),
    ("middle", ["left"] * 2 + ["right"] * 2 + ["center"] * 6, 0.0, 0.0),
    ("yes", ["yes"] * 3 + ["no"] * 3 + ["maybe"] * 4, 0.9, 0.9),
    ("cat", ["cat", "cat"] + ["dog"] * 8, 0.6, 0.6),
    ("snow boarding", ["snowboarding"] * TEN, 0.0, 0.0),
    ("It's sunny", ["it s sunny"] * TEN, 1.0, 1.0),
    ("its", ["it's"] * TEN, 0.0, 0.0),
    ("isnt", ["isn't"] * TEN, 0.0, 0.0),              # pred gains a typographic apostrophe, refs lose theirs
    ("isn’t", ["isnt"] * TEN, 1.0, 0.0),
    ("yes", ["yes\n"] * TEN, 1.0, 0.0),               # official leaves identical references untouched
    ("a", [str(i) for i in range(9)] + ["a"], 0.3, 0.0),  # "a" -> "" on both sides (EvalAI only)
    ("1", [str(i) for i in range(10)], 0.3, 0.3),     # ten different answers, one matches
    ("one", ["1", "2", "3", "1", "1", "one", "one", "2", "2", "2"], 1.0, 0.9),
    ("1", ["1", "2", "3", "1", "1", "one", "one", "2", "2", "2"], 1.0, 0.9),
    ("two", ["2", "2", "2", "2", "3", "3", "3", "3", "3", "3"], 1.0, 1.0),
    ("Dogs?", ["dogs"] * 2 + ["dog"] * 8, 0.6, 0.6),
    ("white.", ["white."] * TEN, 1.0, 0.0),
    ("white", ["white."] * 6 + ["white"] * 4, 1.0, 1.0),
    ("1,5", ["15"] * 3 + ["1 5"] * 7, 0.9, 0.9),
    ("the 2 cats", ["2 cats"] * 3 + ["two cats"] * 7, 1.0, 0.9),
]


@pytest.mark.parametrize("text, expected", PUNCTUATION)
def test_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", DIGIT_ARTICLE)
def test_digits_articles_contractions(text, expected):
    assert process_digit_article(text) == expected


@pytest.mark.parametrize("pred, refs, evalai, official", ACCURACY)
def test_accuracy_both_conventions(pred, refs, evalai, official):
    assert vqa_accuracy(pred, tuple(refs)) == pytest.approx(evalai, abs=1e-9)
    assert vqa_accuracy(pred, tuple(refs), "evalai") == pytest.approx(evalai, abs=1e-9)
    assert vqa_accuracy_official(pred, tuple(refs)) == pytest.approx(official, abs=1e-9)


def test_case_count():
    assert len(PUNCTUATION) + len(DIGIT_ARTICLE) + 2 * len(ACCURACY) >= 100


def test_registry_and_default_convention():
    assert METRICS["vqa_accuracy"] is vqa_accuracy
    assert METRICS["vqa_accuracy_official"] is vqa_accuracy_official
    scores = score_all(["vqa_accuracy", "vqa_accuracy_official"], "2", ("two",) * 10)
    assert scores == {"vqa_accuracy": 1.0, "vqa_accuracy_official": 0.0}


def test_prediction_normalisation_chain():
    assert normalize_prediction(" The Two\tDogs.\n") == "2 dogs"
    assert normalize_references(["Two", "two"], "official") == ["Two", "two"]  # punctuation only
    with pytest.raises(ValueError):
        normalize_references(["x"], "nope")


def test_leave_one_out_is_the_ten_choose_nine_average():
    """The closed form equals the literal average over the 10 subsets of 9 annotators."""
    import itertools
    import random

    rng = random.Random(0)
    pool = ["yes", "no", "2", "two", "a dog", "dog", "red"]
    for _ in range(200):
        refs = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(pool)
        norm = normalize_references(refs, "evalai")
        p = normalize_prediction(pred)
        literal = sum(min(1, sum(r == p for r in sub) / 3) for sub in itertools.combinations(norm, 9)) / 10
        assert vqa_accuracy(pred, tuple(refs)) == pytest.approx(literal)
