"""Sphinx configuration of the scdoloris documentation.

Build with ``make docs`` (installs the ``docs`` extra, then
``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Intersphinx links (Python, NumPy, pandas, SciPy, AnnData, scanpy, scvi-tools, PyTorch) need the
internet. They are on when building on Read the Docs or with ``SCDOLORIS_DOCS_INTERSPHINX=1`` and
off otherwise, so that an offline build (CI) makes no network connection and still passes with
warnings as errors.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
# the package is installed (editable) in the docs environment; fall back to the source tree
try:
    import scdoloris
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent / "src"))
    import scdoloris

# -- Project -------------------------------------------------------------------------------
project = "scdoloris"
author = "scdoloris developers"
copyright = f"{date.today().year}, {author}"
release = scdoloris.__version__
version = ".".join(release.split(".")[:2])
repository_url = "https://github.com/scverse/scdoloris"

# -- Extensions ----------------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST markdown and notebooks (brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]
# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 9 deprecates (a Python warning, not a
# Sphinx one): keep the build log readable
warnings.filterwarnings(
    "ignore", message=r".*_RstSnippetParser\.set_application.*", module="sphinx_autodoc_typehints"
)
if importlib.util.find_spec("sphinx_copybutton") is not None:
    extensions.append("sphinx_copybutton")

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
master_doc = "index"
default_role = "literal"

# -- MyST and notebooks --------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "substitution"]
myst_heading_anchors = 3
# The tutorials are the notebooks of tutorials/ (executed with their outputs by `make
# tutorials`); docs/tutorials/*.ipynb are symlinks to them. Notebooks are stored with their
# outputs: never execute them while building the docs.
nb_execution_mode = "off"
nb_merge_streams = True

# -- autodoc / autosummary / napoleon ------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autoclass_content = "class"
# an undocumented override (e.g. a network's forward) shows no docstring rather than its base's
autodoc_inherit_docstrings = False
typehints_defaults = "comma"
always_use_bars_union = True

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_use_ivar = True  # dataclass "Attributes" sections: no duplicate object descriptions


def _own_members() -> dict[str, dict[str, list[str]]]:
    """Public methods and properties that scdoloris's own classes define, per class.

    The autosummary class template lists these (and documents only these), so members that
    a class inherits from a private scdoloris base (the baselines' ``fit`` and ``predict``)
    are shown, while those of PyTorch, Lightning and scvi-tools bases are left to their docs.
    """
    import inspect

    out: dict[str, dict[str, list[str]]] = {}
    modules = ("scdoloris", "scdoloris.module", "scdoloris.train", "scdoloris.baselines")
    for modname in (*modules, "scdoloris.ablations"):
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not inspect.isclass(obj):
                continue
            methods: list[str] = []
            attributes: list[str] = []
            seen: set[str] = set()
            for cls in obj.__mro__:
                if not cls.__module__.startswith("scdoloris"):
                    continue
                for key, value in vars(cls).items():
                    if key.startswith("_") or key in seen:
                        continue
                    seen.add(key)
                    if isinstance(value, property):
                        attributes.append(key)
                    elif callable(value) or isinstance(value, (classmethod, staticmethod)):
                        methods.append(key)
            out[f"{obj.__module__}.{obj.__qualname__}"] = {
                "methods": sorted(methods),
                "attributes": sorted(attributes),
            }
            out[f"{modname}.{name}"] = out[f"{obj.__module__}.{obj.__qualname__}"]
    return out


autosummary_context = {"own_members": _own_members()}

# Prefer importing the real package (installed with its dependencies). Heavy imports are
# mocked only if they are missing, e.g. on a machine without torch.
_HEAVY = ["torch", "torch_geometric", "lightning", "scvi"]
autodoc_mock_imports = [m for m in _HEAVY if importlib.util.find_spec(m) is None]

# -- Intersphinx (needs the internet) ------------------------------------------------------
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
}


_mode = os.environ.get("SCDOLORIS_DOCS_INTERSPHINX", "0").lower()
_on = _mode in ("1", "true", "yes", "on") or os.environ.get("READTHEDOCS") == "True"
intersphinx_mapping = dict(_INTERSPHINX) if _on else {}
if intersphinx_mapping:
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_timeout = 10

# -- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"scdoloris {release}"
# _static holds the figures and their scripts, referenced from the pages (copied to _images);
# add html_static_path = ["_static"] here once there is custom CSS
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "source_repository": repository_url,
    "source_branch": "main",
    "source_directory": "docs/",
    "navigation_with_keys": True,
}
pygments_style = "default"
pygments_dark_style = "monokai"

# copy-button: do not copy prompts
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


def _public_bases(app, name, obj, options, bases: list) -> None:
    """Show a private base class (the baselines' ``_Baseline``) as its own public bases."""
    out: list = []
    for base in bases:
        if getattr(base, "__name__", "").startswith("_"):
            out += [b for b in base.__bases__ if b is not object and b not in out]
        elif base not in out:
            out.append(base)
    bases[:] = out or [object]


def _notebook_source_links(app, pagename, templatename, context, doctree) -> None:
    """Point a tutorial's "view" and "edit" links at tutorials/*.ipynb, not at its docs symlink.

    ``docs/tutorials/NAME.ipynb`` links to ``tutorials/NAME.ipynb``, so the page ``tutorials/NAME``
    has the source ``tutorials/NAME.ipynb`` relative to the repository root.
    """
    if pagename.startswith("tutorials/") and context.get("page_source_suffix") == ".ipynb":
        base = f"{repository_url}/{{kind}}/{html_theme_options['source_branch']}/{{{{filename}}}}"
        context["theme_source_view_link"] = base.format(kind="blob")
        context["theme_source_edit_link"] = base.format(kind="edit")


def setup(app) -> None:
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("html-page-context", _notebook_source_links)
