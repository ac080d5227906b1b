"""Template paraphrases that keep a question's meaning, and distractor clauses appended to it.

paraphrase: each question type of the shapes benchmark (colour, shape, count, existence,
position, relation) is recognised by its wording and rewritten from a template that keeps
every word the answer depends on (the object's name, the side, the article); any other
question gets a generic wrapper that leaves its words untouched. Severity is how far the
template departs from the original:
  1  a mild reword (same structure: "what is the color of the X?")
  2  another question form ("which color is the X?")
  3  a restructured question ("the X is which color?")
  4  an instruction instead of a question ("tell me the color of the X.")
  5  the strongest rewording: a long, conversational sentence around the same content
Each level has two templates; the seed picks one.

distractor: a clause appended after the question that does not change its answer, more
misleading with severity: 1 a neutral instruction, 2 an unrelated remark, 3 an unrelated
object, 4 an instruction to ignore a coloured object the question does not name, 5 two such
objects. Distractor words come from the shapes vocabulary (colours and shapes that are not
in the question): for a text-guided pruner they compete with the question's own words.
"""
from __future__ import annotations

import random
import re

from .text import register_text_perturbation, split_tail

_X = r"(?P<x>[\w' -]+?)"
# (question type, pattern on the lower-cased body, five levels of two templates)
TEMPLATES: list[tuple[str, re.Pattern, list[list[str]]]] = [
    ("relation", re.compile(rf"what colou?r is the (?:object|thing) to the (?P<side>left|right) of the {_X}"), [
        ["what is the color of the object to the {side} of the {x}?", "what colour is the object to the {side} of the {x}?"],
        ["which color is the object to the {side} of the {x}?", "what color does the object to the {side} of the {x} have?"],
        ["the object to the {side} of the {x} is which color?", "what color is the thing that is to the {side} of the {x}?"],
        ["tell me the color of the object to the {side} of the {x}.", "name the color of the object to the {side} of the {x}."],
        ["looking at the picture, what color is the object that you find to the {side} of the {x}?",
         "in this image, which color has been used for the object lying to the {side} of the {x}?"],
    ]),
    ("color", re.compile(rf"what colou?r is the {_X}"), [
        ["what is the color of the {x}?", "what colour is the {x}?"],
        ["which color is the {x}?", "what color does the {x} have?"],
        ["the {x} is which color?", "what color has the {x} got?"],
        ["tell me the color of the {x}.", "name the color of the {x}."],
        ["looking at the picture, what would you say is the color of the {x}?",
         "in this image, which color has been used to paint the {x}?"],
    ]),
    ("shape", re.compile(r"what shape is the (?P<c>[\w-]+) (?:object|thing)"), [
        ["what is the shape of the {c} object?", "what shape is the {c} thing?"],
        ["which shape is the {c} object?", "what shape does the {c} object have?"],
        ["the {c} object has which shape?", "what kind of shape is the {c} object?"],
        ["tell me the shape of the {c} object.", "name the shape of the {c} object."],
        ["looking at the picture, what would you say is the shape of the object that is {c}?",
         "in this image, which geometric form does the {c} object take?"],
    ]),
    ("count", re.compile(rf"how many {_X} are there"), [
        ["how many {x} are in the image?", "how many {x} are there in total?"],
        ["what is the number of {x}?", "how many {x} can you see?"],
        ["the {x}: how many are there?", "what number of {x} is there?"],
        ["tell me how many {x} there are.", "give the number of {x} in the image."],
        ["looking at the picture, if you counted every one of the {x}, how many would you find?",
         "in this image, what is the total count of {x} that appear?"],
    ]),
    ("exist", re.compile(rf"is there (?P<a>an?) {_X}"), [
        ["is there {a} {x} in the image?", "does the image have {a} {x}?"],
        ["can you see {a} {x}?", "does {a} {x} appear?"],
        ["does the picture contain {a} {x}?", "is {a} {x} present?"],
        ["tell me whether there is {a} {x}.", "answer yes or no: is there {a} {x}?"],
        ["looking at the picture carefully, would you say that it contains {a} {x} anywhere?",
         "in this image, can {a} {x} be found somewhere among the objects?"],
    ]),
    ("position", re.compile(rf"is the {_X} (?P<prep>on|at) the (?P<p>left|top) or the (?P<q>right|bottom)"), [
        ["is the {x} {prep} the {p} or {prep} the {q}?", "is the {x} located {prep} the {p} or the {q}?"],
        ["where is the {x}: {prep} the {p} or {prep} the {q}?", "is the {x} placed {prep} the {p} or the {q}?"],
        ["the {x} is {prep} the {p} or {prep} the {q}?", "{prep} the {p} or {prep} the {q}: where is the {x}?"],
        ["tell me whether the {x} is {prep} the {p} or {prep} the {q}.", "say if the {x} is {prep} the {p} or the {q}."],
        ["looking at the picture, would you say that the {x} sits {prep} the {p} or {prep} the {q} of the image?",
         "in this image, is the {x} found towards the {p} or towards the {q}?"],
    ]),
]
GENERIC = [
    ["please, {b}{t}", "{b}, please{t}"],
    ["question: {b}{t}", "quick question: {b}{t}"],
    ["about this image: {b}{t}", "regarding the picture, {b}{t}"],
    ["tell me this about the image: {b}{t}", "i would like to know the following: {b}{t}"],
    ["looking at the picture carefully and answering in a word or two, {b}{t}",
     "here is a question about what the image shows, please answer it: {b}{t}"],
]


def question_type(question: str) -> str | None:
    """The shapes question type a question's wording matches, or None (free-form)."""
    body = split_tail(question)[0].strip().lower()
    return next((qtype for qtype, pat, _ in TEMPLATES if pat.fullmatch(body)), None)


def _match_case(original: str, out: str) -> str:
    return out[0].upper() + out[1:] if original[:1].isupper() else out


@register_text_perturbation("paraphrase")
def paraphrase(text: str, severity: int, seed: int) -> str:
    body, tail = split_tail(text)
    low = body.strip().lower()
    rng = random.Random(seed)
    for _, pat, levels in TEMPLATES:
        m = pat.fullmatch(low)
        if m:
            return _match_case(body.strip(), rng.choice(levels[severity - 1]).format(**m.groupdict()))
    if not low:
        return text
    b = body.strip()
    b = b[0].lower() + b[1:] if b[:1].isupper() and not b[:2].isupper() else b
    return _match_case(body.strip(), rng.choice(GENERIC[severity - 1]).format(b=b, t=tail.strip() or "?"))


COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
OBJECTS = ("circle", "square", "triangle", "diamond", "cross")
DISTRACTORS = [
    ["answer briefly.", "take a careful look."],
    ["the weather was nice that day.", "this photo was taken recently."],
    ["there may also be a {n1} nearby.", "someone mentioned a {n1} earlier."],
    ["ignore the {c1} {n1}.", "do not mind the {c1} {n1}."],
    ["ignore the {c1} {n1}, and the {c2} {n2} does not matter either.",
     "do not mind the {c1} {n1} or the {c2} {n2} next to it."],
]


@register_text_perturbation("distractor")
def distractor(text: str, severity: int, seed: int) -> str:
    rng = random.Random(seed)
    words = set(re.findall(r"[a-z]+", text.lower()))
    colors = [c for c in COLORS if c not in words] or list(COLORS)
    objects = [o for o in OBJECTS if o not in words and o + "s" not in words] or list(OBJECTS)
    c1, c2 = rng.sample(colors, 2) if len(colors) > 1 else (colors[0], colors[0])
    n1, n2 = rng.sample(objects, 2) if len(objects) > 1 else (objects[0], objects[0])
    clause = rng.choice(DISTRACTORS[severity - 1]).format(c1=c1, c2=c2, n1=n1, n2=n2)
    text = text.rstrip()
    return f"{text} {_match_case(text, clause)}" if text else clause
