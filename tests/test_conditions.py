"""Condition names, parsing and the plan: one module, round-tripping every form."""
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robust_atp.conditions import condition_name, condition_names, condition_plan, parse_condition, split_condition

NAMES = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)
SEVS = st.integers(1, 5)


def test_parse_condition_all_four_forms():
    c = parse_condition("clean")
    assert (c.kind, c.family, c.severity) == ("clean", None, 0)
    c = parse_condition("image:gaussian_noise@3")
    assert (c.kind, c.image, c.family, c.severity) == ("image", ("gaussian_noise", 3), "image:gaussian_noise", 3)
    c = parse_condition("text:keyboard@5")
    assert (c.kind, c.text, c.family, c.severity) == ("text", ("keyboard", 5), "text:keyboard", 5)
    c = parse_condition("image:fog@3+text:ocr@1")
    assert (c.kind, c.image, c.text) == ("image+text", ("fog", 3), ("ocr", 1))
    assert (c.family, c.severity) == ("image:fog@3+text:ocr", 1)
    for bad in ("fog@3", "image:fog", "image:@3", "image:fog@x", "text:a@1+image:b@2", "image:a@1+image:b@2"):
        with pytest.raises(ValueError):
            parse_condition(bad)


@given(img=st.one_of(st.none(), st.tuples(NAMES, SEVS)), txt=st.one_of(st.none(), st.tuples(NAMES, SEVS)))
def test_parse_condition_round_trips(img, txt):
    parts = ([f"image:{img[0]}@{img[1]}"] if img else []) + ([f"text:{txt[0]}@{txt[1]}"] if txt else [])
    name = "+".join(parts) or "clean"
    c = parse_condition(name)
    assert (c.name, c.image, c.text) == (name, img, txt)
    assert c.severity == (txt[1] if txt else img[1] if img else 0)
    assert split_condition(name) == (img if img else (None, 0))
    assert split_condition(name, "text") == (txt if txt else (None, 0))


def test_plan_and_names_follow_each_other():
    fog, blur = SimpleNamespace(name="image:fog@1"), SimpleNamespace(name="image:blur@2")
    typo = SimpleNamespace(name="text:typo@3")
    assert condition_name(None, None) == "clean" and condition_name(fog, typo) == "image:fog@1+text:typo@3"
    assert condition_plan([fog], [typo]) == [(None, [None, typo]), (fog, [None])]
    assert condition_names([fog, blur], True, [typo]) == ["clean", "text:typo@3", "image:fog@1", "image:blur@2"]
    assert condition_names([fog], False, [typo], cross=True) == ["text:typo@3", "image:fog@1", "image:fog@1+text:typo@3"]
    assert condition_names([fog], False) == ["image:fog@1"]
