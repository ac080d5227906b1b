"""The VQA answer normalisation rules: EvalAI's as lmms-eval ships them, and vqaEval.py's.

Two references share most of these rules, with small differences that move scores:

- lmms-eval's `EvalAIAnswerProcessor` (EvolvingLMMs-Lab/lmms-eval @ 75571cfe,
  `lmms_eval/tasks/_task_utils/vqa_eval_metric.py`; a copy of mmf's EvalAI processor);
- `VQAEval.processPunctuation` / `processDigitArticle` of GT-Vision-Lab/VQA @ a013f004 (HEAD,
  "Fixed processing answers bug"), `PythonEvaluationTools/vqaEvaluation/vqaEval.py`.

Both delete or space out the same 21 marks (not the apostrophe, not the colon), strip periods
with the same malformed pattern, map number words zero..ten (and "none") to digits, drop the
articles a / an / the and restore the apostrophes of a fixed contraction table (ASCII
apostrophes, identical in both). They differ in the digit-comma-digit test that decides whether
marks are deleted (`COMMA_RUN`, `COMMA_ONE_PY2`), and vqaEval.py runs under Python 2.7, whose `str.lower`,
whitespace and `\\d` are not Python 3's (`py2_lower`, `PY2_SPACE`, ASCII digits).
"""
from __future__ import annotations

import re

# in the references' order (it does not change the result, but keeps the reading easy)
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
# "(?!<=\d)" is a look-ahead for the text "<=" followed by a digit, never true before a ".": the
# pattern strips every period not followed by a digit. The references pass re.UNICODE (32) as
# the third argument of `sub`, which is its count: at most 32 periods go.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
PERIOD_STRIP_PY2 = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)  # Python 2's \d without re.UNICODE: 0-9 only
PERIOD_COUNT = int(re.UNICODE)
# lmms-eval: a comma run between digits; vqaEval.py: exactly one comma between two digits
COMMA_RUN = re.compile(r"(?<=\d)(\,)+(?=\d)")
COMMA_ONE_PY2 = re.compile(r"(\d)(\,)(\d)", re.ASCII)

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(("a", "an", "the"))

# key -> value, one pair a line. The keys with capitals (Id've, I'dve, Im, Ive) can never match:
# words are lower-cased first. "somebody'd" maps to "somebodyd", backwards, as released.
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't | couldn'tve couldn't've
couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've
hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's
howd how'd | howll how'll | hows how's | Id've I'd've | I'dve I'd've | Im I'm | Ive I've | isnt isn't
itd it'd | itd've it'd've | it'dve it'd've | itll it'll | let's let's | maam ma'am | mightnt mightn't
mightnt've mightn't've | mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've
neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at
'ow'sat 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've | she's she's | shouldve should've
shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd
somebodyd've somebody'd've | somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's
someoned someone'd | someoned've someone'd've | someone'dve someone'd've | someonell someone'll
someones someone's | somethingd something'd | somethingd've something'd've | something'dve something'd've
somethingll something'll | thats that's | thered there'd | thered've there'd've | there'dve there'd've
therere there're | theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll
theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've | weve we've
werent weren't | whatll what'll | whatre what're | whats what's | whatve what've | whens when's
whered where'd | wheres where's | whereve where've | whod who'd | whod've who'd've | who'dve who'd've
wholl who'll | whos who's | whove who've | whyll why'll | whyre why're | whys why's | wont won't
wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all
yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've | y'all'dve y'all'd've
youd you'd | youd've you'd've | you'dve you'd've | youll you'll | youre you're | youve you've
"""
CONTRACTIONS = dict(pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair.strip())

# Python 2.7's unicode whitespace (Unicode 5.2): Python 3's plus U+180E MONGOLIAN VOWEL SEPARATOR
PY2_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e\u2000\u2001\u2002\u2003\u2004\u2005\u2006" \
            "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def py2_lower(text: str) -> str:
    """`unicode.lower()` of Python 2.7: the simple per-character mapping (no final-sigma rule,
    U+0130 to a plain "i"). Letters added to Unicode after 5.2 are lowered here, not there."""
    return "".join("i" if c == "\u0130" else c.lower() for c in text)


_PY2_TO_SPACE = str.maketrans({"\u180e": " "})


def py2_split(text: str) -> list[str]:
    return text.translate(_PY2_TO_SPACE).split() if "\u180e" in text else text.split()


def py2_strip(text: str) -> str:
    return text.strip(PY2_SPACE)


def strip_marks(text: str, glued_digits: bool) -> str:
    """The shared punctuation step: a mark is deleted where it touches a space anywhere in the
    *input* text (or everywhere when `glued_digits`), otherwise replaced by a space; the test
    reads the original text while the replacements act on the running output."""
    out = text
    for p in PUNCTUATION:
        if glued_digits or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return out


def evalai_punctuation(text: str) -> str:
    """lmms-eval `EvalAIAnswerProcessor.process_punctuation`."""
    out = strip_marks(text, COMMA_RUN.search(text) is not None)
    return PERIOD_STRIP.sub("", out, count=PERIOD_COUNT)


def evalai_digit_article(text: str) -> str:
    """lmms-eval `EvalAIAnswerProcessor.process_digit_article`."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def evalai_process(text: str) -> str:
    """lmms-eval `EvalAIAnswerProcessor.__call__` (TextVQA, VizWiz): lower-case, delete every
    comma and question mark, split off "'s" ("dog's" -> "dog 's"), strip; newlines and tabs to
    spaces, strip; then the punctuation and digit / article steps. Commas are gone before the
    punctuation step, so its digit-comma test never fires on this path."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return evalai_digit_article(evalai_punctuation(text))


def official_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`, as Python 2.7 runs it."""
    out = strip_marks(text, COMMA_ONE_PY2.search(text) is not None)
    return PERIOD_STRIP_PY2.sub("", out, count=PERIOD_COUNT)


def official_digit_article(text: str) -> str:
    """vqaEval.py `processDigitArticle`, as Python 2.7 runs it."""
    words = [NUMBER_WORDS.get(w, w) for w in py2_split(py2_lower(text))]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)
