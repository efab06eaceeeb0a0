"""The demo's steps, messages and figure (the fast configuration: seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scdoloris.demo import CAPTION, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A fast demo run, with every message and which files existed when it was printed."""
    out = tmp_path_factory.mktemp("demo")
    said: list[tuple[str, set[str]]] = []

    def echo(message: str) -> None:
        said.append((message, {p.name for p in Path(out).iterdir()}))

    result = run_demo(out, fast=True, progress_bar=False, echo=echo)
    return result, said


def test_the_write_step_says_what_it_writes_before_writing_it(demo):
    result, said = demo
    for kind in ("pred", "metrics", "figure"):
        name = result.files[kind].name
        before = [m for m, existing in said if name in m and name not in existing]
        assert before, f"no message announced {name} before it was written: {said}"
    assert said[-1][0].startswith("Wrote")


def test_one_panel_per_held_out_pair_with_control_real_and_predicted_cells(demo):
    result, _ = demo
    axes = [ax for ax in result.figure.axes if ax.get_visible()]
    assert len(axes) == len(result.held_out)
    real = result.metrics.drop_duplicates(["condition"]).set_index("condition")["n_real"]
    n_controls = int(result.metrics["n_pred"].iloc[0])  # one prediction per control cell
    for ax, pair in zip(axes, result.held_out, strict=True):
        assert ax.get_title().startswith(pair)
        points = [len(c.get_offsets()) for c in ax.collections]
        # control, Doloris, Additive (as many predicted as real) and real cells, then 4 means
        assert points == [n_controls] + [int(real[pair])] * 3 + [1] * 4, points
        colors = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections[:4]]
        assert colors[-1] == pytest.approx((0x22 / 255,) * 3)  # the real cells, on top


def test_the_figure_holds_the_tables_numbers_and_a_caption(demo):
    result, _ = demo
    axes = [ax for ax in result.figure.axes if ax.get_visible()]
    m = result.metrics
    e = m[(m["gene_set"] == "all") & (m["metric"] == "e_distance")]
    for ax, pair in zip(axes, result.held_out, strict=True):
        shown = "\n".join(t.get_text() for t in ax.texts)
        for method in ("Doloris", "Additive", "NoChange"):
            value = float(e[(e["condition"] == pair) & (e["method"] == method)]["value"].iloc[0])
            assert f"{method}: {value:.3f}" in shown, shown
    below = " ".join(" ".join(t.get_text() for t in result.figure.texts).split())
    for method, row in result.summary.iterrows():
        means = ", ".join(f"{column} {value:.3f}" for column, value in row.items())
        assert f"{method}: {means}" in below, (method, below)
    assert " ".join(CAPTION.split()) in below
    assert CAPTION.startswith("What to look for")
    assert np.isfinite(result.summary.to_numpy()).all()
