"""The ``scdoloris`` command line: train, predict, evaluate and a built-in demo.

A thin layer over the library: it parses arguments, reads and writes files and prints. Errors
in the user's input (bad paths, missing columns, unknown perturbations, raw counts, ...) are
printed as one red ``Error: ...`` line with exit code 1, without a traceback; usage errors
(a missing option) exit with code 2.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from . import __version__

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

__all__ = ["app"]

#: Width of help and tables when the output is not a terminal (piped, redirected): rich's
#: default, 80 columns, cuts long option names ("--perturbation-…") in the help.
PIPED_WIDTH = 100


def _piped_width(stream) -> int | None:
    """:data:`PIPED_WIDTH` when ``stream`` is not a terminal and no width is set
    (``COLUMNS``, ``TERMINAL_WIDTH``); else None (rich's own choice)."""
    if os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH"):
        return None
    try:
        return None if stream.isatty() else PIPED_WIDTH
    except (AttributeError, ValueError):  # a closed or odd stream
        return PIPED_WIDTH


console = Console(width=_piped_width(sys.stdout))
err_console = Console(stderr=True, width=_piped_width(sys.stderr))
if _piped_width(sys.stdout) is not None:
    import typer.rich_utils

    typer.rich_utils.MAX_WIDTH = PIPED_WIDTH  # --help, piped


class _FlagsWithoutType:
    """Help without a type beside on/off flags: typer shows ``<bool>`` for every option."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsWithoutType, TyperCommand):
    pass


class _Group(_FlagsWithoutType, TyperGroup):
    pass


app = typer.Typer(
    name="scdoloris",
    cls=_Group,
    help=(
        "Predict single-cell perturbation responses with Doloris (dual conditional diffusion "
        "implicit bridges).\n\n"
        "Inputs and outputs are .h5ad files (AnnData). Expression must be log-normalised "
        "(normalize_total then log1p); pass --normalize to do that on raw counts.\n\n"
        "Run [bold]scdoloris demo[/bold] for a self-contained example, or "
        "[bold]scdoloris COMMAND --help[/bold] for the options and examples of a command."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

USER_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


class CLIError(Exception):
    """An error in the user's input, reported as one line without a traceback."""


#: How the library's messages name its arguments -> the command line's flags
_FLAG_WORDS = (
    (r"control_group=(['\"])(.*?)\1", "--control", True),
    (r"perturbation_key=(['\"])(.*?)\1", "--perturbation-key", True),
    (r"cell_type_key=(['\"])(.*?)\1", "--cell-type-key", True),
    (r"cell_type=(['\"])(.*?)\1", "--cell-type", True),
    (r"control_group=", "--control LABEL", False),
    (r"cell_type=\.\.\.", "--cell-type NAME", False),
    (r"`?layer=`?( naming)", r"--layer NAME\1", False),
    (r"layer=None to use adata\.X", "no --layer to read X", False),
    (r"overwrite=True", "--overwrite", False),
)


def cli_words(message: str) -> str:
    """A library message with its Python arguments written as the command line's flags.

    Examples
    --------
    >>> cli_words("No control cells. Did you mean control_group='control'?")
    'No control cells. Did you mean --control control?'
    >>> cli_words("perturbation_key='guide' is not a column; pass cell_type=... or ...")
    '--perturbation-key guide is not a column; pass --cell-type NAME or ...'
    """
    for pattern, flag, quoted in _FLAG_WORDS:
        if quoted:
            message = re.sub(pattern, lambda m, f=flag: f"{f} {shlex.quote(m.group(2))}", message)
        else:
            message = re.sub(pattern, flag, message)
    return message


class Preset(StrEnum):
    """Model presets (see :class:`~scdoloris.DolorisModel`)."""

    default = "default"
    paper = "paper"


# ---------------------------------------------------------------------------- helpers
def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])  # str(KeyError) adds quotes
    return str(error) or type(error).__name__


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(Text(f"Error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    err_console.print(Text(f"Warning: {message}", style="yellow"), soft_wrap=True)


def _info(message: str) -> None:
    console.print(escape(message), soft_wrap=True, highlight=False)


@contextmanager
def _user_errors(inputs: dict[str, str] | None = None) -> Iterator[None]:
    """Turn the library's errors about the user's input into ``Error: ...`` and exit code 1,
    with the libraries' start-up chatter silenced.

    ``inputs`` names the files behind the library's matrices (``"adata.X"``, ``"real"``, ...)
    for the raw-counts error, which then gives the command line's advice.
    """
    from ._anndata_utils import RawCountsError

    try:
        with _quiet_libraries():
            yield
    except RawCountsError as error:
        where = (inputs or {}).get(error.where, error.where)
        _fail(
            f"{where} looks like raw counts (integers up to {error.max_value:.0f}). Pass "
            "--normalize to log-normalise a copy first, or --layer NAME to read a "
            "log-normalised layer."
        )
    except CLIError as error:
        _fail(_message(error))
    except USER_ERRORS as error:
        _fail(cli_words(_message(error)))


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the start-up chatter of Lightning and scvi-tools during a command (progress bars
    stay); the logging levels and warning filters are restored afterwards."""
    from ._logging import quiet

    with quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        yield


def _where(path: Path, layer: str | None) -> str:
    """How an error names the expression of a file (and layer)."""
    return f"{str(path)!r}" if layer is None else f"Layer {layer!r} of {str(path)!r}"


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CLIError(f"{what} {str(path)!r} does not exist.")
    if path.is_dir():
        raise CLIError(f"{what} {str(path)!r} is a directory, not an .h5ad file.")


def _read_h5ad(path: Path, what: str) -> ad.AnnData:
    """Read an .h5ad file; clear errors for a missing or unreadable file."""
    import anndata as ad

    _check_file(path, what)
    try:
        return ad.read_h5ad(path)
    except OSError as error:
        raise CLIError(f"Cannot read {what} {str(path)!r} as an .h5ad file ({error}).") from None


def _normalize(adata: ad.AnnData, layer: str | None, where: str) -> None:
    """``normalize_total`` then ``log1p`` in place (on the copy read from disk).

    ``where`` names the file (and layer) in messages. Values that look log-normalised already
    (not integers, all below the raw-count threshold of 30) are refused: normalising them
    again would distort them silently. Other non-integer values (ambient-corrected counts,
    say) are normalised, with a warning.
    """
    import numpy as np
    import scanpy as sc
    from scipy import sparse

    from ._anndata_utils import RAW_COUNT_MAX

    if layer is not None and layer not in adata.layers:
        raise CLIError(f"Layer {layer!r} is not in {where} (layers: {list(adata.layers.keys())}).")
    X = adata.X if layer is None else adata.layers[layer]
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if values.size and not np.all(np.mod(values, 1) == 0):
        largest = float(values.max())
        if largest <= RAW_COUNT_MAX:
            raise CLIError(
                f"--normalize: {where} looks log-normalised already (its values are not "
                f"integers and at most {largest:.3g}); normalising it again would distort it. "
                "Drop --normalize, or pass --layer NAME naming a layer of raw counts."
            )
        _warn(
            f"--normalize: {where} holds non-integer values (up to {largest:.3g}), not raw "
            "counts; normalising them as counts."
        )
    sc.pp.normalize_total(adata, layer=layer)
    sc.pp.log1p(adata, layer=layer)


def _control_label(
    adata: ad.AnnData, key: str, given: str | None, where: str
) -> tuple[str, str | None]:
    """``--control``, or when it is not given the one usual control label in ``obs[key]``;
    and a line saying which label was found (None when given)."""
    from ._anndata_utils import close_matches
    from .model._setup import COMMON_CONTROL_LABELS

    if given is not None:
        return given, None
    if key not in adata.obs:
        columns = [str(c) for c in adata.obs.columns]
        hits = close_matches(key, columns)
        hint = f"Did you mean --perturbation-key {shlex.quote(hits[0])}?" if hits else ""
        raise CLIError(
            f"{where} has no obs column {key!r} (columns: {columns}). "
            + (hint or "Pass --perturbation-key COLUMN.")
        )
    values = [str(v) for v in adata.obs[key].astype(str).unique()]
    usual = {label.lower() for label in COMMON_CONTROL_LABELS}
    found = sorted(v for v in values if v.lower() in usual)
    if len(found) == 1:
        n = int((adata.obs[key].astype(str) == found[0]).sum())
        return found[0], (
            f"Control label: {found[0]!r} ({n} cells of {where}; pass --control to choose another)."
        )
    if found:
        raise CLIError(
            f"{where} has several usual control labels in obs[{key!r}] ({found}); pass "
            f"--control {shlex.quote(found[0])} (or another)."
        )
    raise CLIError(
        f"{where} has none of the usual control labels ({', '.join(COMMON_CONTROL_LABELS)}) "
        f"in obs[{key!r}] (values: {sorted(values)[:10]}). Pass --control LABEL."
    )


def _scale_advice(message: str, normalized: bool) -> str:
    """The command line's fix for a warning about the scale of the input (``""`` for others)."""
    about_scale = ("over the model's genes after expm1", "like raw counts")
    if not any(words in message for words in about_scale):
        return ""
    if normalized:
        return (
            " (--normalize was given: CONTROLS and the training file were normalised to "
            "clearly different totals; check that CONTROLS holds raw counts of the same genes.)"
        )
    return " From the command line: give CONTROLS as raw counts and pass --normalize."


def _write_h5ad(adata: ad.AnnData, path: Path) -> None:
    if path.is_dir():
        raise CLIError(f"Output {str(path)!r} is a directory; give a file name ending in .h5ad.")
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    if path.is_dir():
        raise CLIError(f"Output {str(path)!r} is a directory; give a file name ending in .csv.")
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def _seed(seed: int) -> None:
    import scvi

    scvi.settings.seed = seed


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.3f}"


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"scdoloris {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Predict single-cell perturbation responses with Doloris."""


PROGRESS = typer.Option("--progress/--no-progress", help="Show progress bars.")
CONTROL_HELP = (
    "Label of control cells in the perturbation column. Default: the one of "
    "ctrl, control, non-targeting, NT, unperturbed, DMSO that is there."
)
SEED = typer.Option("--seed", help="Random seed (scvi.settings.seed and the prediction's seed).")


# ---------------------------------------------------------------------------- train
@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris train screen.h5ad -k perturbation -o model/   (control label: found)\n\n"
        "scdoloris train counts.h5ad -k guide --control non-targeting --cell-type-key cell_line "
        "--normalize --max-epochs 200 --seed 1 -o model/"
    ),
)
def train(
    data: Annotated[
        Path,
        typer.Argument(help="AnnData (.h5ad) of control and perturbed cells.", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Directory to write the model to.", show_default=False),
    ],
    perturbation_key: Annotated[
        str,
        typer.Option(
            "--perturbation-key", "-k", help="obs column naming each cell's perturbation."
        ),
    ] = "perturbation",
    control: Annotated[
        str | None, typer.Option("--control", "-c", help=CONTROL_HELP, show_default=False)
    ] = None,
    cell_type_key: Annotated[
        str | None,
        typer.Option(help="obs column with cell types (every type needs control cells)."),
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer with the expression (default: X).")
    ] = None,
    max_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Training epochs (default: at most 600 optimisation steps)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Cells per step.")] = 128,
    preset: Annotated[
        Preset, typer.Option(help="Model widths: default (CPU) or paper (GPU).")
    ] = Preset.default,
    seed: Annotated[int, SEED] = 0,
    normalize: Annotated[
        bool,
        typer.Option("--normalize", help="Run normalize_total and log1p first (for raw counts)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing model directory.")
    ] = False,
    progress: Annotated[bool, PROGRESS] = True,
) -> None:
    """Train a Doloris model on control and perturbed cells and save it to a directory."""
    where = _where(data, layer)
    with _user_errors({"adata.X": where, f"layer {layer!r}": where}):
        if output.exists() and not overwrite:
            raise CLIError(
                f"{str(output)!r} already exists. Pass --overwrite to replace it, or choose "
                "another directory."
            )
        adata = _read_h5ad(data, "Data file")
        from .model import DolorisModel
        from .model._doloris import EXIT_SIGTERM

        control, found = _control_label(adata, perturbation_key, control, f"{str(data)!r}")
        if found:
            _info(found)
        if normalize:
            _normalize(adata, layer, where)
        _seed(seed)
        DolorisModel.setup_anndata(
            adata,
            perturbation_key=perturbation_key,
            control_group=control,
            cell_type_key=cell_type_key,
            layer=layer,
        )
        model = DolorisModel(adata, preset=preset.value)
        _info(model._model_summary_string)
        start = time.perf_counter()
        with warnings.catch_warnings():  # the library's advice on SIGTERM is for Python code
            warnings.filterwarnings("ignore", message="Training stopped by SIGTERM")
            try:
                model.train(
                    max_epochs=max_epochs, batch_size=batch_size, enable_progress_bar=progress
                )
            except SystemExit as stop:
                if stop.code != EXIT_SIGTERM:
                    raise
                n_done = len((model.history or {}).get("train_loss", []))
                _fail(
                    f"Training stopped by SIGTERM after {n_done} epoch(s); no model was written.",
                    code=EXIT_SIGTERM,
                )
        elapsed = time.perf_counter() - start
        model.save(str(output), overwrite=overwrite)
    loss = (model.history or {}).get("train_loss")
    final = f", final loss {float(loss.iloc[-1, 0]):.4f}" if loss is not None else ""
    _info(
        f"Trained on {adata.n_obs} cells x {adata.n_vars} genes in {elapsed:.0f} s{final}. "
        f"Saved the model to {output}/"
    )
    _info(model.validation_summary())


# ---------------------------------------------------------------------------- predict
@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris predict model/ controls.h5ad -p KLF1+MAP2K6 -p KLF1+TGFBR2 -o pred.h5ad\n\n"
        "scdoloris predict model/ screen.h5ad -p KLF1 --cell-type K562 --seed 3 -o pred.h5ad\n\n"
        "If CONTROLS has the model's perturbation column, only its control cells are used, so "
        "the whole screen can be passed."
    ),
)
def predict(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory written by `train`.", show_default=False)
    ],
    controls: Annotated[
        Path, typer.Argument(help="AnnData (.h5ad) of control cells.", show_default=False)
    ],
    perturbation: Annotated[
        list[str],
        typer.Option(
            "--perturbation",
            "-p",
            help="Perturbation to predict, e.g. KLF1 or KLF1+MAP2K6; repeat for several.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Predictions (.h5ad) to write.", show_default=False),
    ],
    cell_type: Annotated[
        str | None,
        typer.Option(help="Cell type of all input cells (when CONTROLS lacks the column)."),
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer of CONTROLS to read (default: the model's).")
    ] = None,
    n_steps: Annotated[int, typer.Option(min=1, help="DDIM steps of each ODE run.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Control cells per batch.")] = 512,
    seed: Annotated[int, SEED] = 0,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize", help="Run normalize_total and log1p on CONTROLS first (for raw counts)."
        ),
    ] = False,
    progress: Annotated[bool, PROGRESS] = True,
) -> None:
    """Predict perturbed cells from control cells: one predicted cell per control cell."""
    with _user_errors({"the input expression": _where(controls, layer)}):
        if not model_dir.is_dir():
            raise CLIError(f"Model directory {str(model_dir)!r} does not exist.")
        if not (model_dir / "model.pt").is_file():
            raise CLIError(
                f"{str(model_dir)!r} holds no saved model (no model.pt); pass the directory "
                "written by `scdoloris train`."
            )
        adata = _read_h5ad(controls, "Controls file")
        from .model import DolorisModel

        try:
            model = DolorisModel.load(str(model_dir))
        except RuntimeError as error:  # weights that do not fit this version's module
            detail = " ".join(line.strip() for line in str(error).splitlines())
            raise CLIError(
                f"Cannot load the model in {str(model_dir)!r} with scdoloris {__version__} "
                f"({detail[:300]}). Was it saved by another version?"
            ) from None
        key = model.setup_args["perturbation_key"]
        label = model.setup_args["control_group"]
        if key in adata.obs:
            is_control = (adata.obs[key].astype(str) == label).to_numpy()
            if not is_control.any():
                raise CLIError(
                    f"{str(controls)!r} has a column {key!r} but no control cells in it "
                    f"({key} == {label!r})."
                )
            if not is_control.all():
                _info(f"Using the {int(is_control.sum())} control cells ({key} == {label!r}).")
                adata = adata[is_control].copy()
        if normalize:
            _normalize(adata, layer, _where(controls, layer))
        _seed(seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            pred = model.predict(
                adata,
                perturbation,
                cell_type=cell_type,
                n_steps=n_steps,
                batch_size=batch_size,
                seed=seed,
                layer="setup" if layer is None else layer,
                progress_bar=progress,
            )
        for message in dict.fromkeys(str(w.message) for w in caught if w.category is UserWarning):
            _warn(cli_words(message) + _scale_advice(message, normalize))
        _write_h5ad(pred, output)
    names = pred.uns["scdoloris"]["perturbations"]
    _info(
        f"Predicted {pred.n_obs} cells ({len(names)} perturbation(s) x {adata.n_obs} control "
        f"cells): {', '.join(names)}. Wrote {output}"
    )


# ---------------------------------------------------------------------------- evaluate
METRIC_NAMES = {
    "e_distance": "E-distance",
    "emd": "EMD",
    "rmse": "RMSE",
    "pearson_delta": "Pearson Δ",
}
HIGHER_IS_BETTER = {"pearson_delta"}  # the others are distances and errors: lower is better


def _metrics_table(table: pd.DataFrame, gene_set: str, title: str) -> Table:
    """Conditions (and, with baselines, methods) x metrics; per condition and metric the best
    method in green."""
    rows = table[table["gene_set"] == gene_set]
    if "method" not in rows:
        rows = rows.assign(method="prediction")
    methods = list(dict.fromkeys(rows["method"]))
    wide = rows.pivot_table(
        index=["condition", "method"], columns="metric", values="value", sort=False
    )
    counts = rows.drop_duplicates(["condition", "method"]).set_index(["condition", "method"])
    metrics = [m for m in METRIC_NAMES if m in wide.columns]
    lower = [METRIC_NAMES[m] for m in metrics if m not in HIGHER_IS_BETTER]
    higher = [METRIC_NAMES[m] for m in metrics if m in HIGHER_IS_BETTER]
    caption = "; ".join(
        text
        for text in (
            f"↓ lower is better: {', '.join(lower)}" if lower else "",
            f"↑ higher is better: {', '.join(higher)}" if higher else "",
            "green: the best method of the condition" if len(methods) > 1 else "",
        )
        if text
    )
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    out.add_column("condition", style="bold")
    if len(methods) > 1:
        out.add_column("method")
    for m in metrics:
        out.add_column(
            f"{METRIC_NAMES[m]} {'↑' if m in HIGHER_IS_BETTER else '↓'}", justify="right"
        )
    out.add_column("cells (pred / real)", justify="right")
    conditions = list(dict.fromkeys(c for c, _ in wide.index))
    for i, cond in enumerate(conditions):
        block = wide.loc[cond]
        best = {
            m: (block[m].idxmax() if m in HIGHER_IS_BETTER else block[m].idxmin())
            for m in metrics
            if block[m].notna().any()
        }
        if i and len(methods) > 1:
            out.add_section()
        for method, row in block.iterrows():
            n = counts.loc[(cond, method)]
            cells = [
                f"[green]{_fmt(float(row[m]))}[/green]"
                if len(block) > 1 and best.get(m) == method
                else _fmt(float(row[m]))
                for m in metrics
            ]
            label = [escape(str(method))] if len(methods) > 1 else []
            out.add_row(
                escape(str(cond)), *label, *cells, f"{int(n['n_pred'])} / {int(n['n_real'])}"
            )
    # the mean over every condition, for the methods that scored them all (Additive scores
    # combinations only: a mean over fewer conditions would not compare)
    complete = [
        method
        for method in methods
        if len(wide.xs(method, level="method").dropna(how="all")) == len(conditions)
    ]
    if len(conditions) > 1 and complete:
        out.add_section()
        means = wide.groupby(level="method", sort=False).mean().loc[complete]
        for method, row in means.iterrows():
            label = [escape(str(method))] if len(methods) > 1 else []
            out.add_row("mean", *label, *[_fmt(float(row[m])) for m in metrics], "", style="bold")
    return out


def _starting_cells(pred: ad.AnnData, source: ad.AnnData | None) -> ad.AnnData | None:
    """The cells of ``source`` the predictions started from (``obs["control_cell"]``), in
    their first order; None when ``source`` lacks some of them (or there is no record)."""
    import pandas as pd

    if source is None or "control_cell" not in pred.obs:
        return None
    names = pd.unique(pred.obs["control_cell"].astype(str).to_numpy())
    if not len(names) or not pd.Index(names).isin(source.obs_names).all():
        return None
    return source[names].copy()


def _controls(
    pred: ad.AnnData,
    real: ad.AnnData,
    real_path: Path,
    controls: ad.AnnData | None,
    controls_path: Path | None,
    key: str,
    label: str | None,
) -> tuple[ad.AnnData, str]:
    """The control cells the changes are measured from, and a line saying which they are.

    From ``--controls-file``: the cells the predictions started from (``obs["control_cell"]``)
    when it has them all, else its cells labelled ``label`` (found when None), else all its
    cells. Without it: the cells of REAL labelled ``label`` (found when None).
    """
    if controls is not None:
        where = f"{str(controls_path)!r}"
        started = _starting_cells(pred, controls)
        if started is not None:
            line = (
                f"Controls: the {started.n_obs} cells of {where} the predictions started from "
                "(their obs['control_cell'])."
            )
            return started, line
        if key in controls.obs:
            label, _ = _control_label(controls, key, label, where)
            is_control = (controls.obs[key].astype(str) == label).to_numpy()
            if not is_control.any():
                values = sorted(controls.obs[key].astype(str).unique())
                raise CLIError(
                    f"{where} has neither the cells the predictions started from nor control "
                    f"cells ({key} == {label!r}; values: {values[:10]}). Pass --control LABEL."
                )
            line = f"Controls: the {int(is_control.sum())} cells of {where} labelled {label!r}."
            return controls[is_control].copy(), line
        return controls, f"Controls: all {controls.n_obs} cells of {where}."
    where = f"{str(real_path)!r}"
    file_hint = (
        "Pass --controls-file FILE: the controls given to `predict`, or the training file (the "
        "cells the predictions started from, their obs['control_cell'], are looked up in it)"
    )
    if key not in real.obs:
        raise CLIError(
            f"{where} has no obs column {key!r} to find control cells in (columns: "
            f"{list(real.obs.columns)}). {file_hint}, or --perturbation-key."
        )
    if label is None:
        try:
            label, _ = _control_label(real, key, None, where)
        except CLIError:
            raise CLIError(
                f"{where} has no control cells (none of the usual control labels in "
                f"obs[{key!r}]). {file_hint}, or --control LABEL."
            ) from None
    is_control = (real.obs[key].astype(str) == label).to_numpy()
    if not is_control.any():
        values = sorted(real.obs[key].astype(str).unique())
        raise CLIError(
            f"{where} has no control cells ({key} == {label!r}; values: {values[:10]}). "
            f"{file_hint}, or --control LABEL."
        )
    line = f"Controls: the {int(is_control.sum())} cells of {where} labelled {label!r}."
    return real[is_control].copy(), line


def _baseline_predictions(
    pred: ad.AnnData,
    pred_key: str,
    starts: ad.AnnData,
    same_cells: bool,
    train: ad.AnnData | None,
    train_where: str,
    key: str,
    label: str,
    cell_type_key: str | None,
    layer: str | None,
) -> tuple[dict[str, ad.AnnData], list[str]]:
    """Each baseline's prediction of the predicted conditions from the same input cells, and
    lines saying what was computed.

    NoChange always (the input cells themselves); MeanShift and Additive from the training
    cells of ``--train-file``: per condition and cell type of ``pred``, from the cells each
    prediction started from (``obs["control_cell"]``), or from all of ``starts`` when those
    are not known.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd

    from ._perturbation import parse_perturbation
    from .baselines import Additive, MeanShift, NoChange

    conditions = pred.obs[pred_key].astype(str).to_numpy()
    has_types = "cell_type" in pred.obs
    types = pred.obs["cell_type"].astype(str).to_numpy() if has_types else None
    genes = pred.var_names  # the baselines predict the prediction's genes
    fitted = {}
    fit_on = ad.AnnData(
        X=starts[:, genes].X if layer is None else starts[:, genes].layers[layer],
        obs=pd.DataFrame({"_label": label}, index=starts.obs_names),
        var=pd.DataFrame(index=genes),
    )
    fitted["NoChange"] = NoChange().fit(fit_on, "_label", control_group=label)
    notes = []
    if train is not None:
        missing = genes.difference(train.var_names)
        if len(missing):
            raise CLIError(
                f"{train_where} lacks {len(missing)} of the predicted genes, e.g. "
                f"{missing[:5].tolist()}; pass the training file of the model."
            )
        train = train[:, genes]
        for cls in (MeanShift, Additive):
            fitted[cls.name] = cls().fit(
                train, key, control_group=label, cell_type_key=cell_type_key, layer=layer
            )
    out: dict[str, list[ad.AnnData]] = {name: [] for name in fitted}
    skipped: dict[str, list[str]] = {}
    pooled: list[str] = []
    groups = pd.DataFrame({"condition": conditions, "type": types if has_types else ""})
    for (condition, ct), rows in groups.groupby(["condition", "type"], sort=False).groups.items():
        rows = np.asarray(rows)
        if same_cells:
            cells = starts[pred.obs["control_cell"].astype(str).to_numpy()[rows]]
        else:
            cells = starts
        for name, baseline in fitted.items():
            if name == "Additive" and len(parse_perturbation(condition, label)) < 2:
                continue  # a single perturbation's additive prediction is its mean shift
            kwargs = {}
            if name != "NoChange" and cell_type_key is not None and ct in baseline.cell_types_:
                kwargs["cell_type"] = ct
            source = cells if name != "NoChange" else fit_on[cells.obs_names]
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    block = baseline.predict(
                        source, condition, layer=None if name == "NoChange" else layer, **kwargs
                    )
            except ValueError:
                skipped.setdefault(name, []).append(condition)
                continue
            if name == "MeanShift" and any("not in the training" in str(w.message) for w in caught):
                pooled.append(condition)
            block.obs[pred_key] = condition
            out[name].append(block)
    predictions = {
        name: ad.concat(blocks, index_unique="-") for name, blocks in out.items() if blocks
    }
    inputs = (
        "the same input cells as the prediction (its obs['control_cell'])"
        if same_cells
        else "the control cells above (the cells the predictions started from were not found)"
    )
    notes.append(f"Baselines on {inputs}: {', '.join(predictions)}.")
    if train is None:
        notes.append(
            "MeanShift and Additive need the training cells: pass --train-file FILE (the "
            "training .h5ad) to compute them."
        )
    else:
        notes.append(
            f"MeanShift and Additive (combinations only): the changes measured in {train_where}."
        )
        if pooled:
            notes.append(
                f"MeanShift of {', '.join(sorted(set(pooled)))} (not in the training file): "
                "the mean change of all perturbed training cells."
            )
        for name, names in skipped.items():
            notes.append(
                f"{name} not computed for {', '.join(sorted(set(names)))} (it needs every "
                "single perturbation of a combination in the training file)."
            )
    return predictions, notes


@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris evaluate pred.h5ad screen.h5ad -o metrics.csv   (controls: the cells of "
        "screen.h5ad the predictions started from)\n\n"
        "scdoloris evaluate pred.h5ad real.h5ad --controls-file controls.h5ad --train-file "
        "train.h5ad -o metrics.csv   (with the MeanShift and Additive baselines)\n\n"
        "scdoloris evaluate pred.h5ad real.h5ad --controls-file train.h5ad -k guide "
        "--control non-targeting --de-top 20 --de-top 50 -o metrics.csv"
    ),
)
def evaluate(
    pred: Annotated[
        Path, typer.Argument(help="Predicted cells (.h5ad) from `predict`.", show_default=False)
    ],
    real: Annotated[Path, typer.Argument(help="Real perturbed cells (.h5ad).", show_default=False)],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Metrics table (.csv) to write.", show_default=False),
    ],
    controls_file: Annotated[
        Path | None,
        typer.Option(
            "--controls-file",
            help=(
                "Control cells (.h5ad) the changes are measured from: the cells the predictions "
                "started from (their obs['control_cell']) if the file has them all, e.g. the "
                "controls given to `predict` or the training file; else its cells labelled "
                "--control; else all its cells. Default: the cells of REAL the predictions "
                "started from, else its control cells."
            ),
            show_default=False,
        ),
    ] = None,
    train_file: Annotated[
        Path | None,
        typer.Option(
            "--train-file",
            help=(
                "Training cells (.h5ad, controls and perturbed): adds the MeanShift and "
                "Additive baselines, predicted from the same input cells. NoChange is always "
                "scored."
            ),
            show_default=False,
        ),
    ] = None,
    control: Annotated[
        str | None, typer.Option("--control", "-c", help=CONTROL_HELP, show_default=False)
    ] = None,
    perturbation_key: Annotated[
        str,
        typer.Option("--perturbation-key", "-k", help="obs column naming the perturbation."),
    ] = "perturbation",
    cell_type_key: Annotated[
        str | None,
        typer.Option(help="obs column with cell types of --train-file, for its baselines."),
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer of REAL and the controls (default: X).")
    ] = None,
    de_top: Annotated[
        list[int] | None,
        typer.Option(
            "--de-top", min=1, help="Sizes of the top-DE gene sets; repeat. \\[default: 20, 40]"
        ),
    ] = None,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize",
            help="Run normalize_total and log1p on REAL, the controls and --train-file first.",
        ),
    ] = False,
) -> None:
    """Score predictions against real cells, beside the baselines on the same input cells
    (E-distance, EMD, RMSE: lower is better; Pearson delta: higher is better)."""
    inputs = {"real": _where(real, layer), "control": _where(controls_file or real, layer)}
    with _user_errors(inputs):
        p = _read_h5ad(pred, "Predictions file")
        r = _read_h5ad(real, "Real-cells file")
        c = _read_h5ad(controls_file, "Controls file") if controls_file is not None else None
        t = _read_h5ad(train_file, "Training file") if train_file is not None else None
        import pandas as pd

        from .metrics import evaluate as evaluate_

        if "predicted" in p.obs and p.obs["predicted"].dtype == bool:
            p = p[p.obs["predicted"].to_numpy()].copy()  # predict(include_controls=True)
        if normalize:
            _normalize(r, layer, _where(real, layer))
            if c is not None:
                _normalize(c, layer, _where(controls_file, layer))
            if t is not None:
                _normalize(t, layer, _where(train_file, layer))
        starts = _starting_cells(p, c) if c is not None else None
        starts = _starting_cells(p, r) if starts is None else starts
        c, which = _controls(p, r, real, c, controls_file, perturbation_key, control)
        found = None
        if t is not None:
            control, found = _control_label(t, perturbation_key, control, f"{str(train_file)!r}")
        elif control is None:
            control = "ctrl"  # only names the control in perturbation labels
            for cells in (c, r):
                try:
                    control = _control_label(cells, perturbation_key, None, "")[0]
                    break
                except CLIError:
                    continue
        pred_key = perturbation_key if perturbation_key in p.obs else "perturbation"
        scoring = {
            "de_top": (20, 40) if not de_top else de_top,
            "groupby": perturbation_key,
            "layer": layer,
            "control_group": control,
        }
        table = evaluate_(p, r, c, pred_groupby=pred_key, **scoring)
        tables = [table.assign(method="prediction")]
        baselines, notes = _baseline_predictions(
            p,
            pred_key,
            c if starts is None else starts,
            starts is not None,
            t,
            f"{str(train_file)!r}",
            perturbation_key,
            control,
            cell_type_key,
            layer,
        )
        for name, baseline in baselines.items():
            scored = evaluate_(baseline, r, c, pred_groupby=pred_key, pred_layer=None, **scoring)
            tables.append(scored.assign(method=name))
        table = pd.concat(tables, ignore_index=True)
        table = table[["method", *[col for col in table.columns if col != "method"]]]
        _write_csv(table, output)
    _info(which)
    if found:
        _info(found)
    for note in notes:
        _info(note)
    console.print(_metrics_table(table, "all", "Predicted vs real cells (all genes)"))
    _info(f"{table['condition'].nunique()} condition(s) scored. Wrote {output}")


# ---------------------------------------------------------------------------- demo
@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris demo                     (about 3000 cells x 400 genes; prints its run time)\n\n"
        "scdoloris demo --fast -o /tmp/demo (tiny data, a few epochs; seconds)"
    ),
)
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for pred.h5ad, metrics.csv, pairs.png.")
    ] = Path("demo_output"),
    fast: Annotated[
        bool, typer.Option("--fast", help="Tiny data and a few epochs (seconds), e.g. for CI.")
    ] = False,
    seed: Annotated[int, SEED] = 0,
    max_epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the demo's training epochs.")
    ] = None,
    progress: Annotated[bool, PROGRESS] = True,
) -> None:
    """Simulate a screen, hold out gene pairs, train Doloris and compare it to baselines.

    Writes the predictions of the held-out pairs (pred.h5ad), the metrics of Doloris and of the
    Additive and NoChange baselines (metrics.csv) and a figure of each pair's control, real and
    predicted cells with the metrics (pairs.png).
    """
    with _user_errors():
        if output.exists() and not output.is_dir():
            raise CLIError(f"{str(output)!r} is a file; give a folder for the demo's outputs.")
        from .demo import run_demo

        start = time.perf_counter()
        result = run_demo(
            output,
            fast=fast,
            seed=seed,
            max_epochs=max_epochs,
            progress_bar=progress,
            echo=_info,
        )
        elapsed = time.perf_counter() - start

    summary = Table(
        title="Mean over held-out pairs",
        caption=f"{len(result.held_out)} pairs, all {result.n_genes} genes; lower is better",
        title_justify="left",
        caption_justify="left",
    )
    summary.add_column("method", style="bold")
    for name in result.summary.columns:
        summary.add_column(str(name), justify="right")
    best = result.summary.idxmin()
    for method, row in result.summary.iterrows():
        cells = [
            f"[green]{_fmt(v)}[/green]" if best[col] == method else _fmt(v)
            for col, v in row.items()
        ]
        summary.add_row(str(method), *cells)
    console.print()
    console.print(summary)

    per_pair = Table(title="E-distance per held-out pair", title_justify="left")
    per_pair.add_column("pair", style="bold")
    per_pair.add_column("interaction")
    m = result.metrics
    m = m[(m["gene_set"] == "all") & (m["metric"] == "e_distance")]
    wide = m.pivot_table(index="condition", columns="method", values="value", sort=False)
    methods = list(result.summary.index)
    for method in methods:
        per_pair.add_column(method, justify="right")
    for cond, row in wide.iterrows():
        low = row[methods].idxmin()
        per_pair.add_row(
            str(cond),
            result.held_out.get(str(cond), ""),
            *[f"[green]{_fmt(row[x])}[/green]" if x == low else _fmt(row[x]) for x in methods],
        )
    console.print(per_pair)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    _info(f"Done in {elapsed:.0f} s ({steps}).")
    for kind, path in result.files.items():
        _info(f"  {kind:8s} {path}")
