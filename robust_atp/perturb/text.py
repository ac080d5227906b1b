"""Question perturbations, graded to severities 1-5 and seeded per (suite seed, example, condition).

A text condition is a (perturbation, severity) pair named `text:<perturbation>@<severity>`;
crossed with an image condition it is `image:<c>@<s>+text:<p>@<s>`. Each perturbation is a
function (text, severity, seed) -> text registered in `TEXT_PERTURBATIONS`:

  character level (nlpaug): keyboard, ocr, char_insert, char_substitute, char_swap, char_delete
      a share 0.05 * severity of the words (at least one, as MMRobustness grades them) gets
      nlpaug's default share of its characters (0.3, at least one) changed
  word level: spelling (nlpaug's SpellingAug), word_swap, word_delete (RandomWordAug),
      synonym (WordNet, see `wordnet.py`): a share 0.05 * severity of the words, at least one
  templates (`paraphrase.py`): paraphrase, distractor

Only the question's body is perturbed: its closing punctuation ("?") is kept as it is, and
words are split on whitespace with punctuation inside the question as separate tokens, so
"what's" stays one word. nlpaug draws from Python's `random` and NumPy's global generator:
each call runs under `seeded_global_rngs(seed)`.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from ..errors import SuiteError
from ..seeding import seeded_global_rngs, stable_seed

TextPerturbation = Callable[[str, int, int], str]
TEXT_PERTURBATIONS: dict[str, TextPerturbation] = {}


def register_text_perturbation(name: str):
    def deco(fn: TextPerturbation) -> TextPerturbation:
        TEXT_PERTURBATIONS[name] = fn
        return fn
    return deco


@dataclass(frozen=True, order=True)
class TextCondition:
    perturbation: str
    severity: int

    @property
    def name(self) -> str:
        return f"text:{self.perturbation}@{self.severity}"


def resolve_text_conditions(cfg) -> list[TextCondition]:
    """The suite's text conditions (perturbation x severity), in preset order then severity."""
    from .image import load_preset

    if cfg is None:
        return []
    names = load_preset(cfg.preset, key="perturbations")["perturbations"] if cfg.preset else list(cfg.perturbations)
    for i, name in enumerate(names):
        if name not in TEXT_PERTURBATIONS:
            import difflib
            near = difflib.get_close_matches(str(name), sorted(TEXT_PERTURBATIONS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            where = ".preset" if cfg.preset else f".perturbations[{i}]"
            raise SuiteError(f"{where}: unknown text perturbation {name!r}{hint}; "
                             f"known: {', '.join(sorted(TEXT_PERTURBATIONS)) or 'none'}")
        if name in names[:i]:  # a repeated condition would be generated and reported twice
            where = ".preset" if cfg.preset else f".perturbations[{i}]"
            raise SuiteError(f"{where}: {name!r} is listed twice")
    if "synonym" in names:
        from .wordnet import check_installed
        try:
            check_installed()
        except SuiteError as e:
            where = ".preset" if cfg.preset else f".perturbations[{list(names).index('synonym')}]"
            raise SuiteError(f"{where}: {e}") from None
    return [TextCondition(n, s) for n in names for s in cfg.severities]


def perturb_text(text: str, cond: TextCondition, seed: int) -> str:
    """The perturbed question; depends on (text, condition, seed) only."""
    return TEXT_PERTURBATIONS[cond.perturbation](text, cond.severity, seed)


# ----------------------------------------------------------------------------- tokens

_TAIL = re.compile(r"[\s?.!]*$")
_TOKEN = re.compile(r"[\w'’-]+|[^\w\s]")
_NO_SPACE_BEFORE = re.compile(r" ([,;:%)\]}]|\.(?!\w))")
_NO_SPACE_AFTER = re.compile(r"([(\[{]) ")


def split_tail(text: str) -> tuple[str, str]:
    """(body, tail): the tail is the closing run of '?', '.', '!' and spaces, kept unperturbed."""
    m = _TAIL.search(text)
    return text[:m.start()], text[m.start():]


def tokenize(text: str) -> list[str]:
    """Words (apostrophes and hyphens inside) and single punctuation marks."""
    return _TOKEN.findall(text)


def detokenize(tokens: list[str]) -> str:
    text = " ".join(t for t in tokens if t)
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


def word_share(severity: int) -> float:
    return 0.05 * severity


def _on_body(fn: Callable[[str], str], text: str) -> str:
    body, tail = split_tail(text)
    if not body.strip():
        return text
    return fn(body) + tail


# ----------------------------------------------------------------------------- nlpaug

def _char_aug(kind: str, severity: int):
    import nlpaug.augmenter.char as nac

    common = dict(aug_word_p=word_share(severity), aug_word_min=1, tokenizer=tokenize, reverse_tokenizer=detokenize)
    if kind == "keyboard":
        return nac.KeyboardAug(**common)
    if kind == "ocr":
        aug = nac.OcrAug(**common)
        # pick only words holding a character the OCR table maps (most letters have none)
        chars = "".join(sorted(aug.model.model))
        aug.stopwords_regex = re.compile(rf"^[^{re.escape(chars)}]*$")
        return aug
    return nac.RandomCharAug(action=kind, **common)


def _word_aug(kind: str, severity: int):
    import nlpaug.augmenter.word as naw

    common = dict(aug_p=word_share(severity), aug_min=1, tokenizer=tokenize, reverse_tokenizer=detokenize)
    if kind == "spelling":
        aug = naw.SpellingAug(**common)
        aug.model = _deterministic_spelling(aug.model)
        return aug
    return naw.RandomWordAug(action=kind, **common)


_CLEAN_MISSPELLING = re.compile(r"^[\w'’.-]+$")


def _deterministic_spelling(model):
    """nlpaug's Spelling model keeps each word's misspellings as list(set(...)), whose order
    changes with PYTHONHASHSEED: sort them (and drop the word itself and the source file's
    '[[' markup) so a seed picks the same misspelling in every process."""
    if getattr(model, "_robust_atp_sorted", False):
        return model
    model.dict = {k: sorted(v for v in set(vs) if v != k and _CLEAN_MISSPELLING.match(v))
                  for k, vs in model.dict.items()}
    model._robust_atp_sorted = True
    return model


@lru_cache(maxsize=None)
def _augmenter(kind: str, severity: int):
    if kind in ("spelling", "swap_word", "delete_word"):
        return _word_aug(kind.replace("_word", ""), severity)
    return _char_aug(kind, severity)


RETRIES = 10


def _nlpaug(kind: str, text: str, severity: int, seed: int) -> str:
    """nlpaug's augmenter on the question's body; a draw that leaves the question unchanged
    (a swap of two equal letters, two swaps that undo each other) is redrawn with the next
    derived seed, up to RETRIES times."""
    aug = _augmenter(kind, severity)
    for attempt in range(RETRIES + 1):
        with seeded_global_rngs(seed if attempt == 0 else stable_seed(seed, "retry", attempt)):
            out = _on_body(lambda body: _first(aug.augment(body)), text)
        if out != text:
            break
    return out


def _first(result) -> str:
    return result[0] if isinstance(result, list) else result


def _nlpaug_perturbation(name: str, kind: str) -> None:
    register_text_perturbation(name)(lambda text, severity, seed: _nlpaug(kind, text, severity, seed))


for _name, _kind in (("keyboard", "keyboard"), ("ocr", "ocr"), ("char_insert", "insert"),
                     ("char_substitute", "substitute"), ("char_swap", "swap"), ("char_delete", "delete"),
                     ("spelling", "spelling"), ("word_swap", "swap_word"), ("word_delete", "delete_word")):
    _nlpaug_perturbation(_name, _kind)


# ----------------------------------------------------------------------------- synonyms

_WORD = re.compile(r"[A-Za-z]+")


@register_text_perturbation("synonym")
def synonym(text: str, severity: int, seed: int) -> str:
    """A share 0.05 * severity of the words (at least one) replaced by a WordNet synonym."""
    from .wordnet import synonyms

    def replace(body: str) -> str:
        spans = list(_WORD.finditer(body))
        cands = {i: synonyms(m.group()) for i, m in enumerate(spans)}
        eligible = [i for i, c in cands.items() if c]
        if not eligible:
            return body
        rng = random.Random(seed)
        n = max(1, math.ceil(word_share(severity) * len(spans)))
        chosen = sorted(rng.sample(eligible, min(n, len(eligible))))
        out, last = [], 0
        for i in chosen:
            m = spans[i]
            new = rng.choice(cands[i])
            if m.group()[0].isupper():
                new = new[0].upper() + new[1:]
            out += [body[last:m.start()], new]
            last = m.end()
        return "".join(out + [body[last:]])

    return _on_body(replace, text)


from . import paraphrase  # noqa: E402,F401  (registers paraphrase and distractor)
