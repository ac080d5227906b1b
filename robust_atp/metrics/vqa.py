"""VQA accuracy as the official VQA evaluation computes it.

Both sides are normalised with the official rules:

- punctuation (`process_punctuation`): each of ; : / ' [ ] " ( ) = + \\ _ > < @ ` , ? is deleted
  when it touches a space anywhere in the text or the text holds a digit,digit group
  ("1,000"), and otherwise replaced by a space; then a period not followed by a digit is
  deleted (the official pattern's look-behind is malformed, so "3." keeps no period but
  "3.5" keeps its; at most 32 periods go, because the official call passes re.UNICODE
  as the replacement count);
- digits and articles (`process_digit_article`): lower-case, split on whitespace, number
  words zero..ten and "none" become digits, a / an / the are dropped, and apostrophe-less
  contractions ("dont", "isnt", ...) get their apostrophes back.

The prediction always goes through both steps (after newlines and tabs become spaces and
surrounding space is stripped). The ground truth depends on the convention:

- `evalai` (default, `vqa_accuracy`): every reference answer is normalised like the prediction
  (with the rules above; the EvalAI server's own regex punctuation step, which strips '-' and
  keeps ':', is not reproduced);
- `official` (`vqa_accuracy_official`): as GT-Vision-Lab's vqaEval.py, reference answers get
  the punctuation step only, and only when the references disagree (a question whose ten
  answers are identical is compared with its raw answer).

Score: for each reference answer i, min(1, #{j != i : ref_j == pred} / 3); the mean over i
(the average over the 10 choose 9 subsets of annotators). Duplicates count: pass all raw
answers.
"""
from __future__ import annotations

import re

_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
# kept exactly as the official pattern: "(?!<=" is a look-ahead for the text "<=", not a look-behind
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = re.UNICODE  # the official call passes re.UNICODE (32) where the count goes
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# the official table, as released: most values carry a typographic apostrophe (U+2019)
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t",
    "dont": "don’t", "hadnt": "hadn’t", "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t",
    "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve", "hes": "he’s", "howd": "how’d",
    "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", "Im": "I’m", "Ive": "I’ve",
    "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "itll": "it’ll", "let’s": "let’s",
    "maam": "ma’am", "mightnt": "mightn’t", "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve",
    "mightve": "might’ve", "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve",
    "oclock": "o’clock", "oughtnt": "oughtn’t", "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve", "she’s": "she’s",
    "shouldve": "should’ve", "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve", "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll", "somebodys": "somebody’s",
    "someoned": "someone’d", "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve",
    "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d",
    "somethingd’ve": "something’d’ve", "something’dve": "something’d’ve", "somethingll": "something’ll",
    "thats": "that’s", "thered": "there’d", "thered’ve": "there’d’ve", "there’dve": "there’d’ve",
    "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve", "twas": "’twas",
    "wasnt": "wasn’t", "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've", "werent": "weren’t",
    "whatll": "what’ll", "whatre": "what’re", "whats": "what’s", "whatve": "what’ve", "whens": "when’s",
    "whered": "where’d", "wheres": "where's", "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve", "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll",
    "whyre": "why’re", "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve",
    "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve", "youll": "you’ll", "youre": "you’re",
    "youve": "you’ve",
}
CONVENTIONS = ("evalai", "official")


def process_punctuation(text: str) -> str:
    out = text
    glued = _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        # the test reads the original text, the replacement acts on the running output
        if p + " " in text or " " + p in text or glued:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_prediction(text: str) -> str:
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def normalize_references(answers, convention: str = "evalai") -> list[str]:
    answers = list(answers)
    if convention == "evalai":
        return [process_digit_article(process_punctuation(a.replace("\n", " ").replace("\t", " ").strip()))
                for a in answers]
    if convention == "official":
        return [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers
    raise ValueError(f"unknown VQA convention {convention!r}; one of {CONVENTIONS}")


def vqa_accuracy(prediction: str, answers, convention: str = "evalai") -> float:
    """Mean over references i of min(1, matches among the other references / 3); 0 with no references."""
    refs = normalize_references(answers, convention)
    if not refs:
        return 0.0
    pred = normalize_prediction(prediction)
    hits = sum(r == pred for r in refs)
    # leaving reference i out removes one match exactly when reference i itself matches
    return sum(min(1.0, (hits - (r == pred)) / 3) for r in refs) / len(refs)


def vqa_accuracy_official(prediction: str, answers) -> float:
    return vqa_accuracy(prediction, answers, "official")
