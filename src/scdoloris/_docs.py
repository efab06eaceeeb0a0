"""Shared docstring parameters, written once and filled in at import (as scvi-tools' docrep).

A docstring keeps each parameter's name line and writes a shared description as a line that
holds only its placeholder, ``{name}``, indented as the description would be; :func:`fill_doc`
replaces that line with the description at the same indentation (the name line stays, so
linters still see every parameter described). The docstrings are complete once the module
that defines them is imported, so ``help()``, the IDE and Sphinx's autodoc show the full text.

Examples
--------
>>> @fill_doc
... def f(num_threads=None):
...     '''Do something.
...
...     Parameters
...     ----------
...     num_threads
...         {num_threads}
...     '''
>>> print(f.__doc__.splitlines()[5].strip())
CPU threads of torch during the call; the previous count is restored afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: Each shared parameter's description in a numpy-style "Parameters" section, unindented.
PARAMS: dict[str, str] = {
    "num_threads": """\
CPU threads of torch during the call; the previous count is restored afterwards.
None: ``scvi.settings.num_threads`` if set, else the model's default on a CPU (one
thread for the default preset up to 2000 genes, see :doc:`/guide/training`) and no
change on a GPU.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


def fill_docstring(doc: str) -> str:
    """Replace each placeholder line of a docstring with its shared parameter's description.

    Parameters
    ----------
    doc
        A docstring whose placeholder lines (only ``{name}`` and indentation) name keys of
        :data:`PARAMS`.

    Returns
    -------
    The docstring with every placeholder line replaced, indented as the placeholder was.

    Raises
    ------
    KeyError
        If a placeholder names no shared parameter.
    """

    def entry(match: re.Match) -> str:
        name = match["name"]
        if name not in PARAMS:
            raise KeyError(f"No shared docstring parameter {name!r} (known: {sorted(PARAMS)}).")
        indent = match["indent"]
        return "\n".join(indent + line if line else line for line in PARAMS[name].splitlines())

    return _PLACEHOLDER.sub(entry, doc)


def fill_doc(obj: F) -> F:
    """Decorator: fill the shared parameters of ``obj``'s docstring (see :func:`fill_docstring`).

    Parameters
    ----------
    obj
        A function or class; its docstring is changed in place. Without a docstring (as under
        ``python -OO``) it is returned as it is.

    Returns
    -------
    ``obj`` itself.
    """
    if obj.__doc__:
        obj.__doc__ = fill_docstring(obj.__doc__)
    return obj
