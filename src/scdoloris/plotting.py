"""Small plotting helpers (matplotlib, no pyplot state: safe in scripts and servers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import pandas as pd

__all__ = ["umap", "validation"]


def umap(
    adata: ad.AnnData,
    color: str | Sequence[str],
    path: str | Path | None = None,
    *,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    seed: int = 0,
    title: str | Sequence[str] | None = None,
    point_size: float | None = None,
    dpi: int = 120,
):
    """Compute a UMAP of ``adata`` (on a copy) and draw one panel per ``color`` column.

    Runs :func:`scanpy.pp.pca`, :func:`scanpy.pp.neighbors` and :func:`scanpy.tl.umap` on a copy
    of ``adata`` (which is not modified) and draws with :func:`scanpy.pl.umap` into a
    :class:`matplotlib.figure.Figure` rendered by the Agg backend, so no display is needed and
    the caller's pyplot state is left alone.

    Parameters
    ----------
    adata
        Cells to embed, log-normalised expression in ``X`` (e.g. control, real and predicted
        cells concatenated).
    color
        Column(s) of ``adata.obs`` to colour by; one panel each. Colours of categorical columns
        are taken from ``adata.uns[f"{column}_colors"]`` when present (scanpy's convention).
    path
        Where to save the figure (``.png``, ``.pdf``, ...); ``None`` only returns it.
    n_pcs
        Principal components used for the neighbour graph (capped by the data's shape).
    n_neighbors
        Neighbours of the kNN graph.
    seed
        Random state of PCA and UMAP.
    title
        Panel title(s); default: the column names.
    point_size
        Marker size; default: scanpy's choice for the number of cells.
    dpi
        Resolution of a saved raster image.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"group": ["a"] * 30 + ["b"] * 30}, index=[str(i) for i in range(60)])
    >>> adata = ad.AnnData(rng.poisson(1.0, size=(60, 20)).astype(np.float32), obs=obs)
    >>> fig = umap(adata, "group")  # doctest: +SKIP
    """
    import scanpy as sc
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = [color] if isinstance(color, str) else list(color)
    if not colors:
        raise ValueError("Pass at least one obs column in color=.")
    missing = [c for c in colors if c not in adata.obs]
    if missing:
        raise KeyError(
            f"color columns {missing} are not in adata.obs (columns: {list(adata.obs.columns)})."
        )
    if adata.n_obs < 3:
        raise ValueError(f"A UMAP needs at least 3 cells, got {adata.n_obs}.")
    titles = colors if title is None else ([title] if isinstance(title, str) else list(title))
    if len(titles) != len(colors):
        raise ValueError(f"Got {len(titles)} titles for {len(colors)} color columns.")

    emb = ad.AnnData(X=adata.X, obs=adata.obs[colors].copy(), var=adata.var[[]].copy())
    for c in colors:
        if emb.obs[c].dtype.name != "category":
            emb.obs[c] = emb.obs[c].astype(str).astype("category")
        if f"{c}_colors" in adata.uns:  # scanpy's convention for fixed category colours
            emb.uns[f"{c}_colors"] = list(adata.uns[f"{c}_colors"])
    n_comps = max(1, min(n_pcs, emb.n_obs - 1, emb.n_vars - 1))
    sc.pp.pca(emb, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(emb, n_neighbors=min(n_neighbors, emb.n_obs - 1), random_state=seed)
    sc.tl.umap(emb, random_state=seed)

    fig = Figure(figsize=(5.5 * len(colors), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(colors), squeeze=False)[0]
    for ax, c, t in zip(axes, colors, titles, strict=True):
        sc.pl.umap(emb, color=c, ax=ax, show=False, title=t, size=point_size, frameon=False)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


_STYLES = {"scaled": "-", "cells": "--", "input": ":"}  # the line of each blend
# the panels of the validation figure: score column, axis label
_PANELS = (
    ("e_distance", "E-distance (lower is better)"),
    ("emd", "EMD (lower is better)"),
    ("de_overlap", "top-20 DE genes found (higher is better)"),
)


def _curve(frame, baseline: str, how: str, metric: str):
    """Per weight, the mean ``metric`` of the candidate ``(baseline, weight, how)``."""
    from .model._calibration import is_candidate

    points = {}
    for w in sorted(set(frame["weight"])):
        rows = frame.loc[is_candidate(frame, (baseline, w, how)), metric]
        if len(rows):
            points[w] = rows.mean()
    return pd.Series(points, dtype=float)


def validation(model, path: str | Path | None = None, *, dpi: int = 120):
    """Draw the inner validation of :meth:`~scdoloris.DolorisModel.train`: how the E-distance,
    the EMD and the top-20 DE genes found of the blend of the model and a baseline change with
    the model's weight ``w`` (:func:`scdoloris.model._calibration.blend`).

    One row of panels (E-distance, EMD, DE genes found) per kind of condition that had inner
    conditions; one line per baseline and blend (solid: the model's cells moved toward the
    blended means, dotted: the input cells; ``w = 1`` of the solid line is the diffusion model
    alone), and a cross at ``w = 0`` for each baseline's own prediction, the mean over the
    kind's inner conditions; the blend :meth:`predict` uses is circled. Read it to see whether
    the model beats the baselines on held-out training conditions of each kind, and by how
    much the calibration leans on them.

    Parameters
    ----------
    model
        A :class:`~scdoloris.DolorisModel` trained with ``calibrate=True``.
    path
        Where to save the figure; ``None`` only returns it.
    dpi
        Resolution of a saved raster image.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.

    Examples
    --------
    >>> fig = scdoloris.plotting.validation(model, "validation.png")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .model._calibration import CELL_BLEND, is_candidate

    calibration = model.calibration
    if calibration is None or calibration.scores.empty:
        raise ValueError(
            "This model has no inner validation: train it with train(calibrate=True) "
            "(the default), with at least two perturbed conditions in the training data."
        )
    scores = calibration.scores
    panels = [(m, label) for m, label in _PANELS if m in scores and scores[m].notna().any()]
    blends = [b for b in calibration.blends if b in set(scores["blend"])]
    kinds = [k for k in calibration.choices if calibration.validated_on.get(k) == k]
    fig = Figure(figsize=(4.5 * len(panels), 2.8 * len(kinds) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(kinds), len(panels), squeeze=False)
    for row, kind in zip(axes, kinds, strict=True):
        frame = scores[scores["kind"] == kind]
        choice = calibration.choice(kind)
        n = frame["condition"].nunique()
        for ax, (metric, label) in zip(row, panels, strict=True):
            for i, name in enumerate(dict.fromkeys(frame["baseline"])):
                for mode in blends:
                    curve = _curve(frame, name, mode, metric)
                    if 1.0 not in curve.index:  # the model alone: with the measured baselines
                        curve[1.0] = _curve(frame, frame["baseline"].iloc[0], mode, metric)[1.0]
                    ax.plot(
                        curve.index,
                        curve.to_numpy(),
                        _STYLES.get(mode, "-"),
                        marker="o",
                        ms=3,
                        color=f"C{i}",
                        label=f"{name} ({mode})",
                    )
                if CELL_BLEND not in blends:  # the baseline's own prediction, for reference
                    own = _curve(frame, name, CELL_BLEND, metric)
                    if 0.0 in own.index:
                        ax.plot([0.0], [own[0.0]], "x", ms=7, color=f"C{i}", label=f"{name} itself")
            chosen = frame.loc[is_candidate(frame, choice), metric].mean()
            ax.plot([choice[1]], [chosen], "o", ms=12, mfc="none", mec="black", label="chosen")
            ax.set_xlabel("weight of the model (0: baseline, 1: model)")
            ax.set_ylabel(label)
            ax.set_title(f"{kind}: {n} inner condition(s)", fontsize=10)
        row[-1].legend(fontsize=7, frameon=False)
    fig.suptitle("Inner validation: the blend of the model and each baseline", fontsize=11)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
