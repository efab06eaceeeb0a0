"""Parsing of perturbation strings into gene (or molecule) tokens.

A perturbation string names one or several perturbed entities joined by a delimiter, for example
``"KLF1+MAP2K6"``. Tokens are compared after stripping white space; control parts (``"ctrl"``)
are dropped, repeated tokens are collapsed and the order does not matter, so ``"B+A"``,
``" A + B "`` and ``"A+ctrl+B"`` all name the condition ``"A+B"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["control_rows", "format_tokens", "normalize_perturbation", "parse_perturbation"]


def _as_control_set(control_group: str | Sequence[str]) -> set[str]:
    if isinstance(control_group, str):
        return {control_group.strip()}
    return {str(c).strip() for c in control_group}


def parse_perturbation(
    perturbation: str,
    control_group: str | Sequence[str] = "ctrl",
    delimiter: str = "+",
) -> tuple[str, ...]:
    """Split a perturbation string into its sorted, unique tokens.

    Parameters
    ----------
    perturbation
        The perturbation, e.g. ``"KLF1+MAP2K6"``. A control label alone gives no token.
    control_group
        The label (or labels) of control cells; parts equal to it are dropped.
    delimiter
        The string that joins the parts of a combination.

    Returns
    -------
    The tokens, sorted and without repeats; ``()`` for a control.

    Raises
    ------
    TypeError
        If ``perturbation`` is not a string (for example a missing value).
    ValueError
        If the string is empty or has an empty part (``"A+"``, ``"A++B"``).

    Examples
    --------
    >>> parse_perturbation(" MAP2K6 + KLF1 ")
    ('KLF1', 'MAP2K6')
    >>> parse_perturbation("ctrl")
    ()
    >>> parse_perturbation("A+A+ctrl")
    ('A',)
    """
    if not isinstance(perturbation, str):
        raise TypeError(
            f"A perturbation must be a string such as 'KLF1' or 'KLF1+MAP2K6', got "
            f"{perturbation!r} of type {type(perturbation).__name__}. Fill missing values or "
            "convert the column with `.astype(str)`."
        )
    controls = _as_control_set(control_group)
    parts = [p.strip() for p in perturbation.split(delimiter)]
    if any(p == "" for p in parts):
        raise ValueError(
            f"The perturbation {perturbation!r} has an empty part when split on {delimiter!r}. "
            f"Write combinations as 'A{delimiter}B' and controls as {sorted(controls)[0]!r}."
        )
    return tuple(sorted({p for p in parts if p not in controls}))


def format_tokens(tokens: Iterable[str], control_group: str = "ctrl", delimiter: str = "+") -> str:
    """Join tokens back into the normalised perturbation string.

    Examples
    --------
    >>> format_tokens(("MAP2K6", "KLF1"))
    'KLF1+MAP2K6'
    >>> format_tokens(())
    'ctrl'
    """
    tokens = sorted(set(tokens))
    return delimiter.join(tokens) if tokens else control_group


def normalize_perturbation(
    perturbation: str,
    control_group: str | Sequence[str] = "ctrl",
    delimiter: str = "+",
) -> str:
    """Return the canonical spelling of a perturbation string.

    Examples
    --------
    >>> normalize_perturbation("MAP2K6+KLF1")
    'KLF1+MAP2K6'
    >>> normalize_perturbation("ctrl+KLF1")
    'KLF1'
    """
    first_control = control_group if isinstance(control_group, str) else list(control_group)[0]
    return format_tokens(
        parse_perturbation(perturbation, control_group, delimiter), first_control, delimiter
    )


def control_rows(tokens) -> np.ndarray:
    """Which rows of a token matrix (cells x max_tokens vocabulary indices, ``-1`` padding) are
    control cells: no token at all.

    Examples
    --------
    >>> control_rows(np.array([[0, -1], [-1, -1]])).tolist()
    [False, True]
    """
    return (np.asarray(tokens) == -1).all(1)
