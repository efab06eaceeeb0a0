"""``python -m scdoloris``: the command line (see :mod:`scdoloris.cli`)."""

from .cli import app

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="scdoloris")
