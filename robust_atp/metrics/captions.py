"""Captioning metrics through pycocoevalcap: corpus-level CIDEr-D and BLEU-4, METEOR where Java exists.

CIDEr-D is a corpus metric: its n-gram document frequencies come from the whole reference
set, so it is computed once per (condition, method) over every scored example
(`corpus_scores`, called from the run summary). The per-row value the engine stores under
`cider_d` is a cheap proxy: the best unigram F1 of the caption against any one reference
(`caption_f1`); the summary's `metrics["cider_d"]` replaces its mean by the corpus CIDEr-D.

Tokenisation: pycocoevalcap's PTBTokenizer (Stanford CoreNLP, Java) when `java` is on the
PATH, as the COCO evaluation does; otherwise a Python rendering of its rules (lower-case,
split off punctuation, drop the punctuation tokens it drops). The summary names which.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter

from .registry import register_metric

# the tokens PTBTokenizer's post-processing removes
_PTB_DROP = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]+")


def simple_tokenize(text: str) -> str:
    return " ".join(t for t in _TOKEN.findall(text.lower()) if t not in _PTB_DROP)


@register_metric("cider_d", "caption", "pycocoevalcap cider/cider.py: Cider (corpus CIDEr-D in the summary); "
                 "per row a unigram-F1 proxy")
def caption_f1(prediction: str, references) -> float:
    """Per-row proxy: the best unigram F1 of the caption against one reference."""
    pred = simple_tokenize(prediction).split()
    best = 0.0
    for ref in references:
        r = simple_tokenize(ref).split()
        common = sum((Counter(pred) & Counter(r)).values())
        if common:
            p, rec = common / len(pred), common / len(r)
            best = max(best, 2 * p * rec / (p + rec))
    return best


cider_d = caption_f1  # the per-row value registered as `cider_d`; the corpus CIDEr-D is `corpus_scores`


def java_available() -> bool:
    return shutil.which("java") is not None


def _tokenize(captions: dict[str, list[str]], use_java: bool) -> dict[str, list[str]]:
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


_REF_CACHE: dict = {}  # the references are the same for every (condition, method) of a run


def _tokenized_refs(references: dict[str, list[str]], ids: list[str], use_java: bool) -> dict[str, list[str]]:
    key = (use_java, tuple((k, tuple(references[k])) for k in ids))
    if key not in _REF_CACHE:
        _REF_CACHE.clear()
        _REF_CACHE[key] = _tokenize({k: [" ".join(r.split()) for r in references[k]] for k in ids}, use_java)
    return _REF_CACHE[key]


def corpus_scores(predictions: dict[str, str], references: dict[str, list[str]], meteor: bool = True,
                  use_java: bool | None = None) -> dict:
    """CIDEr-D and BLEU-1..4 over the whole set (ids present in both dicts); METEOR too when
    Java exists and `meteor` is set. Returns {"cider_d", "bleu4", "bleu": [..4], "meteor"?, "tokenizer"}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ids = sorted(k for k in predictions if references.get(k))
    if not ids:
        return {}
    use_java = java_available() if use_java is None else use_java
    # CoreNLP's tokenizer reads one caption a line: a newline inside a caption would shift them
    res = _tokenize({k: [" ".join(predictions[k].split()) or "."] for k in ids}, use_java)
    gts = _tokenized_refs(references, ids, use_java)
    res = {k: [v[0] if v and v[0] else ""] for k, v in res.items()}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"cider_d": round(float(cider), 6), "bleu4": round(float(bleu[3]), 6),
           "bleu": [round(float(b), 6) for b in bleu], "tokenizer": "ptb-java" if use_java else "python",
           "n": len(ids)}
    if meteor and use_java:
        try:
            from pycocoevalcap.meteor.meteor import Meteor
            out["meteor"] = round(float(Meteor().compute_score(gts, res)[0]), 6)
        except Exception as e:  # METEOR's jar or its paraphrase data missing: report, don't fail the run
            out["meteor_error"] = f"{type(e).__name__}: {e}"
    return out
