"""The example data (issue #33): where it comes from, the loader, and how the tests find it.

The loader's download is not run (no network in the tests): its conversion is checked on a
log-normalised copy of the shared file, which it must turn back into the shared file exactly.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scdoloris.datasets import _norman_subset, norman_2019_subset
from scdoloris.datasets._norman_subset import norman_subset_from_devel, recover_counts

ROOT = Path(__file__).resolve().parents[1]
NORMAN = "norman2019_k562_subset.h5ad"


def _as_devel(counts: ad.AnnData, totals: np.ndarray) -> ad.AnnData:
    """What PerturBench's devel.h5ad holds for these cells: log1p(counts / total * 1e4) in
    float32, its own obs columns, and cells of another data set around them."""
    X = sparse.csr_matrix(counts.X, dtype=np.float64)
    X = sparse.diags(1e4 / totals) @ X
    X.data = np.log1p(X.data)
    condition = counts.obs["perturbation"].astype(str).to_numpy()
    obs = pd.DataFrame(
        {
            "ncounts": counts.obs["total_counts_all_genes"].to_numpy(),
            "condition": condition,
            "perturbation_type": "CRISPRa",
            "dataset": "norman19",
            "cell_type": counts.obs["cell_line"].astype(str).to_numpy(),
        },
        index=counts.obs_names,
    )
    var = pd.DataFrame({"highly_variable": counts.var["highly_variable_orig"].to_numpy()})
    var.index = counts.var_names
    norman = ad.AnnData(X.astype(np.float32).tocsr(), obs=obs, var=var)
    other = ad.AnnData(
        sparse.csr_matrix(np.ones((3, counts.n_vars), dtype=np.float32)),
        obs=obs.iloc[:3].assign(dataset="mcfaline23").set_axis(["o1", "o2", "o3"]),
        var=var,
    )
    return ad.concat([other, norman], merge="first")


def test_counts_are_recovered_exactly_whatever_the_smallest_count():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(50, 30)).astype(np.float64)
    counts[0] = np.where(counts[0] > 0, 2 * counts[0], 0)  # a cell whose smallest count is 2
    counts[:, 0] += 1
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    np.testing.assert_array_equal(recover_counts(logged).toarray(), counts)
    with pytest.raises(ValueError, match="not log1p"):
        recover_counts(np.array([[0.1, 0.2337, 0.51]]))


def test_the_loader_gives_the_shared_file_back(real_data):
    shared = ad.read_h5ad(real_data(NORMAN))
    rng = np.random.default_rng(1)
    # the total each cell was normalised by is not its sum over these 500 genes
    totals = np.asarray(shared.X.sum(1)).ravel() * rng.uniform(20, 200, shared.n_obs)
    out = norman_subset_from_devel(_as_devel(shared, totals))
    assert (out.X != shared.X).nnz == 0 and out.X.dtype == np.float32
    pd.testing.assert_frame_equal(out.obs, shared.obs)
    pd.testing.assert_frame_equal(out.var, shared.var, check_names=False)
    assert out.uns["source"] == shared.uns["source"]
    assert out.var_names.equals(shared.var_names) and out.obs_names.equals(shared.obs_names)


def test_the_loader_reads_a_local_copy_and_checks_a_download(tmp_path, monkeypatch, real_data):
    shared = ad.read_h5ad(real_data(NORMAN))
    devel = _as_devel(shared, np.asarray(shared.X.sum(1)).ravel())
    devel.write_h5ad(tmp_path / "devel.h5ad")
    out = norman_2019_subset(path=tmp_path / "devel.h5ad")
    assert out.n_obs == shared.n_obs and (out.X != shared.X).nnz == 0
    # a download that is not PerturBench's file is refused, and nothing is kept
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not it"))
    with pytest.raises(ValueError, match="SHA-256 .* not the expected PerturBench file"):
        norman_2019_subset(cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_the_readme_says_where_its_data_comes_from():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "scdoloris.datasets.norman_2019_subset()" in readme
    assert _norman_subset.PERTURBENCH_COMMIT[:7] in readme and "PerturBench" in readme
    assert "scvi.settings.seed = 0" in readme


def _pytest(test: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCDOLORIS_DATA": str(data_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", test, "-p", "no:cacheprovider", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_the_tests_find_the_data_through_scdoloris_data(tmp_path, real_data):
    test = "tests/test_baselines.py::test_additive_beats_no_change_on_norman_pair"
    # a folder without the file: skipped, and the summary says how many, which file and the fix
    proc = _pytest(test, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 skipped" in proc.stdout
    assert f"1 real-data test skipped: {NORMAN} not found in {tmp_path}" in proc.stdout
    assert "Set SCDOLORIS_DATA=" in proc.stdout
    # the folder it names is the one read
    (tmp_path / NORMAN).symlink_to(real_data(NORMAN))
    proc = _pytest(test, tmp_path)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-2000:]
    assert "real-data test" not in proc.stdout
