"""WordNet 3.0 through nltk, read from Debian's `wordnet-base` files (/usr/share/wordnet).

No download: nltk's `WordNetCorpusReader` reads the Debian directory directly. Debian leaves out
the `lexnames` file (see /usr/share/doc/wordnet-base/README.Debian), so its fixed table of 45
lexicographer file names is given here; the mapping of other WordNet versions onto 3.0 (used
only by the multilingual OMW data) is switched off. `ROBUST_ATP_WORDNET` points elsewhere.
"""
from __future__ import annotations

import io
import os
import re
import threading
import warnings
from functools import lru_cache
from pathlib import Path

from ..errors import SuiteError

DEBIAN_DIR = "/usr/share/wordnet"
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
# words a synonym would only garble: function words and question words
STOPWORDS = frozenset(
    "a an the is are was were be been am do does did of to in on at by for from with about as into "
    "onto over under or and but not no yes what which who whom whose where when why how many much "
    "there here this that these those it its they them their he she his her you your i me my we our "
    "can could would should will shall may might must has have had any some".split())
_LOCK = threading.Lock()


def wordnet_dir() -> Path:
    return Path(os.environ.get("ROBUST_ATP_WORDNET", DEBIAN_DIR))


def check_installed() -> Path:
    """The WordNet directory, or a SuiteError naming the Debian package that provides it."""
    root = wordnet_dir()
    if not all((root / f).is_file() for f in ("index.noun", "data.noun", "index.adj", "data.adj")):
        raise SuiteError(f"the synonym perturbation needs WordNet: install Debian's 'wordnet-base' package "
                         f"(sudo apt-get install wordnet-base), which provides {DEBIAN_DIR}; "
                         f"no WordNet files in {root}")
    return root


@lru_cache(maxsize=1)
def _reader():
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = check_installed()

    class DebianWordNet(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames":
                return io.StringIO("".join(f"{i:02d}\t{n}\t{_POS_NUMBER[n.split('.')[0]]}\n"
                                           for i, n in enumerate(_LEXNAMES)))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # nltk reads only from directories on its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used
        return DebianWordNet(str(root), None)


def _plural(word: str) -> str:
    return word + ("es" if re.search(r"(s|x|z|ch|sh)$", word) else "s")


@lru_cache(maxsize=65536)
def synonyms(word: str) -> tuple[str, ...]:
    """The other lemmas of `word`'s most frequent sense (WordNet's tagged-sense counts, ties in
    WordNet's order), in any part of speech; a plural noun gets plural synonyms. Only senses
    in which the word appears as written (or as a plural noun) count: an inflected verb or
    adjective ("left", "made", "holding") would get a base-form lemma of another word
    ("go away" for "left"), which changes the question's meaning and grammar. Empty for
    stopwords, unknown words and words whose most frequent sense has no other lemma."""
    low = word.lower()
    if low in STOPWORDS or len(low) < 3:
        return ()
    with _LOCK:
        wn = _reader()
        best, best_count, plural, best_base = None, -1, False, low
        for syn in wn.synsets(low):
            pos = "a" if syn.pos() == "s" else syn.pos()
            base = wn.morphy(low, pos) or low
            if base != low and pos != "n":
                continue  # an inflected verb / adjective: its lemmas would not fit the sentence
            for lemma in syn.lemmas():
                if lemma.name().lower() == base and lemma.count() > best_count:
                    best, best_count, plural, best_base = syn, lemma.count(), pos == "n" and base != low, base
        if best is None:
            return ()
        found = []
        for name in best.lemma_names():
            name = name.replace("_", " ")
            if name.lower() in (low, best_base):
                continue
            name = _plural(name) if plural else name
            if name not in found:
                found.append(name)
    return tuple(found)
