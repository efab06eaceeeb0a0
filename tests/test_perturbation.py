"""Parsing perturbation strings into tokens."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scdoloris._fields import token_matrix
from scdoloris._perturbation import format_tokens, normalize_perturbation, parse_perturbation


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("KLF1", ("KLF1",)),
        ("KLF1+MAP2K6", ("KLF1", "MAP2K6")),
        ("MAP2K6+KLF1", ("KLF1", "MAP2K6")),
        (" MAP2K6 + KLF1 ", ("KLF1", "MAP2K6")),
        ("ctrl", ()),
        ("KLF1+ctrl", ("KLF1",)),
        ("A+A", ("A",)),
    ],
)
def test_parse(text, tokens):
    assert parse_perturbation(text) == tokens


def test_other_delimiter_and_control_labels():
    assert parse_perturbation("B_A", control_group="NT", delimiter="_") == ("A", "B")
    assert parse_perturbation("NT", control_group=["NT", "ctrl"]) == ()
    assert normalize_perturbation("ctrl+B+A") == "A+B"
    assert format_tokens(()) == "ctrl"


@pytest.mark.parametrize("bad", ["", "A+", "+A", "A++B", " + "])
def test_empty_parts_are_refused(bad):
    with pytest.raises(ValueError, match="empty part"):
        parse_perturbation(bad)


@pytest.mark.parametrize("bad", [None, float("nan"), 3])
def test_non_strings_are_refused(bad):
    with pytest.raises(TypeError, match="must be a string"):
        parse_perturbation(bad)


def test_token_matrix_pads():
    mat = token_matrix([("A",), ("A", "B"), ()], ["A", "B"], width=3)
    assert mat.tolist() == [[0, -1, -1], [0, 1, -1], [-1, -1, -1]]


genes = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=6)


@settings(max_examples=50, deadline=None)
@given(st.lists(genes, min_size=1, max_size=4), st.randoms())
def test_order_spaces_and_repeats_do_not_matter(parts, rnd):
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    spaced = " + ".join(shuffled + shuffled[:1])
    assert parse_perturbation(spaced) == parse_perturbation("+".join(parts))
    assert parse_perturbation(normalize_perturbation("+".join(parts))) == parse_perturbation(
        "+".join(parts)
    )
