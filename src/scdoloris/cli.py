"""The ``scdoloris`` command line: train, predict, evaluate and a built-in demo.

A thin layer over the library: it parses arguments, reads and writes files and prints. Errors
in the user's input (bad paths, missing columns, unknown perturbations, raw counts, ...) are
printed as one red ``Error: ...`` line with exit code 1, without a traceback; usage errors
(a missing option) exit with code 2.
"""

from __future__ import annotations

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

console = Console()
err_console = Console(stderr=True)


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
    except (CLIError, *USER_ERRORS) as error:
        _fail(_message(error))


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


def _normalize(adata: ad.AnnData, layer: str | None, what: str) -> None:
    """``normalize_total`` then ``log1p`` in place (on the copy read from disk)."""
    import numpy as np
    import scanpy as sc
    from scipy import sparse

    if layer is not None and layer not in adata.layers:
        raise CLIError(f"Layer {layer!r} is not in {what} (layers: {list(adata.layers.keys())}).")
    X = adata.X if layer is None else adata.layers[layer]
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if values.size and not np.all(np.mod(values, 1) == 0):
        _warn(
            f"--normalize: {what} does not hold integer counts; it may already be "
            "log-normalised (normalising it twice distorts it)."
        )
    sc.pp.normalize_total(adata, layer=layer)
    sc.pp.log1p(adata, layer=layer)


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
SEED = typer.Option("--seed", help="Random seed (scvi.settings.seed and the prediction's seed).")


# ---------------------------------------------------------------------------- train
@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris train screen.h5ad -k perturbation --control ctrl -o model/\n\n"
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
        str, typer.Option("--control", "-c", help="Label of control cells in that column.")
    ] = "ctrl",
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

        if normalize:
            _normalize(adata, layer, "the data")
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
            _normalize(adata, layer, "the controls")
        _seed(seed)
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
    rows = table[table["gene_set"] == gene_set]
    wide = rows.pivot_table(index="condition", columns="metric", values="value", sort=False)
    counts = rows.drop_duplicates("condition").set_index("condition")[["n_pred", "n_real"]]
    metrics = [m for m in METRIC_NAMES if m in wide.columns]
    lower = [METRIC_NAMES[m] for m in metrics if m not in HIGHER_IS_BETTER]
    higher = [METRIC_NAMES[m] for m in metrics if m in HIGHER_IS_BETTER]
    caption = "; ".join(
        text
        for text in (
            f"↓ lower is better: {', '.join(lower)}" if lower else "",
            f"↑ higher is better: {', '.join(higher)}" if higher else "",
        )
        if text
    )
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    out.add_column("condition", style="bold")
    for m in metrics:
        out.add_column(
            f"{METRIC_NAMES[m]} {'↑' if m in HIGHER_IS_BETTER else '↓'}", justify="right"
        )
    out.add_column("cells (pred / real)", justify="right")
    for cond, row in wide.iterrows():
        n = counts.loc[cond]
        out.add_row(
            str(cond),
            *[_fmt(float(row[m])) for m in metrics],
            f"{int(n['n_pred'])} / {int(n['n_real'])}",
        )
    if len(wide) > 1:
        out.add_section()
        out.add_row("mean", *[_fmt(float(wide[m].mean())) for m in metrics], "", style="bold")
    return out


def _controls(
    pred: ad.AnnData,
    real: ad.AnnData,
    real_path: Path,
    controls: ad.AnnData | None,
    controls_path: Path | None,
    key: str,
    label: str,
) -> tuple[ad.AnnData, str]:
    """The control cells the changes are measured from, and a line saying which they are.

    From ``--controls-file``: the cells the predictions started from (``obs["control_cell"]``)
    when it has them all, else its cells labelled ``label``, else all its cells. Without it:
    the cells of REAL labelled ``label``.
    """
    import pandas as pd

    if controls is not None:
        where = f"{str(controls_path)!r}"
        if "control_cell" in pred.obs:
            names = pd.unique(pred.obs["control_cell"].astype(str).to_numpy())
            if len(names) and pd.Index(names).isin(controls.obs_names).all():
                return controls[names].copy(), (
                    f"Controls: the {len(names)} cells of {where} the predictions started from "
                    "(their obs['control_cell'])."
                )
        if key in controls.obs:
            is_control = (controls.obs[key].astype(str) == label).to_numpy()
            if not is_control.any():
                values = sorted(controls.obs[key].astype(str).unique())
                raise CLIError(
                    f"{where} has neither the cells the predictions started from nor control "
                    f"cells ({key} == {label!r}; values: {values[:10]}). Pass --control LABEL."
                )
            return controls[is_control].copy(), (
                f"Controls: the {int(is_control.sum())} cells of {where} labelled {label!r}."
            )
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
    is_control = (real.obs[key].astype(str) == label).to_numpy()
    if not is_control.any():
        values = sorted(real.obs[key].astype(str).unique())
        raise CLIError(
            f"{where} has no control cells ({key} == {label!r}; values: {values[:10]}). "
            f"{file_hint}, or --control LABEL."
        )
    return real[is_control].copy(), (
        f"Controls: the {int(is_control.sum())} cells of {where} labelled {label!r}."
    )


@app.command(
    cls=_Command,
    epilog=(
        "[bold]Examples[/bold]\n\n"
        "scdoloris evaluate pred.h5ad screen.h5ad -o metrics.csv   (controls: cells of "
        "screen.h5ad labelled ctrl)\n\n"
        "scdoloris evaluate pred.h5ad real.h5ad --controls-file controls.h5ad -o metrics.csv\n\n"
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
                "--control; else all its cells. Default: the control cells of REAL."
            ),
            show_default=False,
        ),
    ] = None,
    control: Annotated[
        str, typer.Option("--control", "-c", help="Label of control cells.")
    ] = "ctrl",
    perturbation_key: Annotated[
        str,
        typer.Option("--perturbation-key", "-k", help="obs column naming the perturbation."),
    ] = "perturbation",
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
            "--normalize", help="Run normalize_total and log1p on REAL and the controls first."
        ),
    ] = False,
) -> None:
    """Score predictions against real cells (E-distance, EMD, RMSE: lower is better; Pearson
    delta: higher is better)."""
    inputs = {"real": _where(real, layer), "control": _where(controls_file or real, layer)}
    with _user_errors(inputs):
        p = _read_h5ad(pred, "Predictions file")
        r = _read_h5ad(real, "Real-cells file")
        c = _read_h5ad(controls_file, "Controls file") if controls_file is not None else None
        from .metrics import evaluate as evaluate_

        if "predicted" in p.obs and p.obs["predicted"].dtype == bool:
            p = p[p.obs["predicted"].to_numpy()].copy()  # predict(include_controls=True)
        if normalize:
            _normalize(r, layer, "the real cells")
            if c is not None:
                _normalize(c, layer, "the controls")
        c, which = _controls(p, r, real, c, controls_file, perturbation_key, control)
        pred_key = perturbation_key if perturbation_key in p.obs else "perturbation"
        table = evaluate_(
            p,
            r,
            c,
            de_top=(20, 40) if not de_top else de_top,
            groupby=perturbation_key,
            layer=layer,
            pred_groupby=pred_key,
            control_group=control,
        )
        _write_csv(table, output)
    _info(which)
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
