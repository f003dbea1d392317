from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("rioxarray")


def test_demo_end_to_end(tmp_path, capsys):
    import rioxarray  # noqa: F401

    from xfusion.cli import main

    assert main(["demo", "--out", str(tmp_path), "--size", "96"]) == 0
    out = capsys.readouterr().out
    assert "fine-plus-change" in out and "rmse" in out
    ds = xr.open_zarr(tmp_path / "demo.zarr", decode_coords="all", consolidated=False)
    assert ds["truth"].rio.crs is not None and ds.odc.geobox is not None
    assert ds.odc.geobox.shape == (96, 96)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "catalog" / "catalog.json").exists()


@pytest.mark.filterwarnings("ignore:.*too few clear patches")  # a 64 px scene
def test_demo_metrics_rank_methods(tmp_path):
    from xfusion.demo import run_demo

    res = run_demo(tmp_path, size=64, quiet=True)
    rmse = {k: float(v["rmse"].sel(band="overall")) for k, v in res["metrics"].items()}
    # adding the coarse change must beat copying the fine image of the pair date
    assert rmse["fine-plus-change"] < rmse["fine-at-pair"]
    assert all(np.isfinite(list(rmse.values())))
    # STTFN's default and the paper's configuration
    assert {"sttfn", "sttfn-paper"} <= set(rmse)
