from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import xfusion.metrics as M
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    VariableNotFoundError,
)
from xfusion.testing import raise_if_dask_computes

BANDS = ("red", "nir", "swir")


def make_pair(shape=(3, 14, 16), *, nan=True, seed=0):
    rng = np.random.default_rng(seed)
    coords = {
        "time": np.array(
            ["2020-01-01", "2020-01-02", "2020-01-03"][: shape[0]], dtype="datetime64[ns]"
        ),
        "y": 4_000_000.0 - 30.0 * np.arange(shape[1]),
        "x": 500_000.0 + 30.0 * np.arange(shape[2]),
    }
    ref, pred = {}, {}
    for i, b in enumerate(BANDS):
        r = 0.1 + 0.2 * i + rng.random(shape)
        p = r + rng.normal(0.02 * i, 0.05, shape)
        if nan:
            r[0, 1:3, 2:5] = np.nan
            p[1, 6, 7] = np.nan
            p[2, 10:, :3] = np.nan
        ref[b] = (("time", "y", "x"), r.astype("float32"))
        pred[b] = (("time", "y", "x"), p.astype("float32"))
    return xr.Dataset(pred, coords=coords), xr.Dataset(ref, coords=coords)


def chunked(ds):
    return ds.chunk({"time": 1, "y": (5, 9), "x": (7, 5, 4)})  # ragged, crossing seams


def joint(p, r):
    p = np.asarray(p, dtype="float64")
    r = np.asarray(r, dtype="float64")
    ok = np.isfinite(p) & np.isfinite(r)
    return p[ok], r[ok]


def brute_ssim(p, r, data_range, win=7):
    """Mean SSIM over windows fully valid in both images, window by window (no filters)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h = win // 2
    vals = []
    for i in range(h, p.shape[0] - h):
        for j in range(h, p.shape[1] - h):
            a = p[i - h : i + h + 1, j - h : j + h + 1].astype("float64")
            b = r[i - h : i + h + 1, j - h : j + h + 1].astype("float64")
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            ma, mb = a.mean(), b.mean()
            va, vb = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - ma) * (b - mb)).sum() / (a.size - 1)
            vals.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return np.sum(vals), len(vals)


# ------------------------------------------------------------------- brute-force references
def test_rmse_mae_bias_r_match_numpy_with_nan_mask():
    pred, ref = make_pair()
    res = M.evaluate(pred, ref, metrics=("rmse", "mae", "bias", "r"))
    for b in BANDS:
        p, r = joint(pred[b], ref[b])
        assert p.size < pred[b].size  # the mask removed pixels
        e = p - r
        np.testing.assert_allclose(res.rmse.sel(band=b), np.sqrt(np.mean(e**2)), rtol=1e-12)
        np.testing.assert_allclose(res.mae.sel(band=b), np.mean(np.abs(e)), rtol=1e-12)
        np.testing.assert_allclose(res.bias.sel(band=b), np.mean(e), rtol=1e-10)
        np.testing.assert_allclose(res.r.sel(band=b), np.corrcoef(p, r)[0, 1], rtol=1e-12)
    for m in ("rmse", "mae", "bias", "r"):
        np.testing.assert_allclose(res[m].sel(band="overall"), res[m].sel(band=list(BANDS)).mean())
    xr.testing.assert_allclose(
        M.rmse(pred, ref),
        res.rmse.sel(band=list(BANDS)).to_dataset("band").drop_vars("band", errors="ignore"),
    )


def test_psnr_matches_skimage_and_default_data_range():
    pred, ref = make_pair(nan=False)
    res = M.psnr(pred.isel(time=0), ref.isel(time=0))
    for b in BANDS:
        r = ref[b].values[0].astype("float64")
        p = pred[b].values[0].astype("float64")
        expect = peak_signal_noise_ratio(r, p, data_range=r.max() - r.min())
        np.testing.assert_allclose(res[b], expect, rtol=1e-12)
    # with gaps: the range and the MSE come from pixels valid in both
    pred, ref = make_pair()
    res = M.psnr(pred, ref, data_range={"red": 2.0, "nir": 2.0, "swir": 2.0})
    p, r = joint(pred.nir, ref.nir)
    np.testing.assert_allclose(res.nir, 10 * np.log10(4.0 / np.mean((p - r) ** 2)), rtol=1e-12)
    default = M.psnr(pred, ref)
    np.testing.assert_allclose(
        default.nir, 10 * np.log10((r.max() - r.min()) ** 2 / np.mean((p - r) ** 2)), rtol=1e-12
    )


def test_ssim_matches_skimage_without_nan():
    pred, ref = make_pair(nan=False)
    res = M.ssim(pred, ref, dims=("y", "x"))
    for b in BANDS:
        for t in range(3):
            r = ref[b].values[t].astype("float64")
            p = pred[b].values[t].astype("float64")
            expect = structural_similarity(r, p, data_range=r.max() - r.min())
            np.testing.assert_allclose(res[b].isel(time=t), expect, rtol=1e-10)
    # over all dates: data range of the whole band, windows pooled over the dates
    whole = M.ssim(pred, ref)
    rng = float(ref.red.max() - ref.red.min())
    per = [
        structural_similarity(
            ref.red.values[t].astype("float64"),
            pred.red.values[t].astype("float64"),
            data_range=rng,
        )
        for t in range(3)
    ]
    np.testing.assert_allclose(whole.red, np.mean(per), rtol=1e-10)


def test_ssim_with_nan_matches_window_by_window_brute_force():
    pred, ref = make_pair()
    res = M.ssim(pred, ref, data_range=1.5)
    for b in BANDS:
        total, count = 0.0, 0
        for t in range(3):
            s, n = brute_ssim(pred[b].values[t], ref[b].values[t], 1.5)
            total, count = total + s, count + n
        assert count < 3 * (14 - 6) * (16 - 6)  # windows with NaN were dropped
        np.testing.assert_allclose(res[b], total / count, rtol=1e-9)


def test_ergas_matches_formula():
    pred, ref = make_pair()
    ratio = 30 / 480
    terms = []
    for b in BANDS:
        p, r = joint(pred[b], ref[b])
        terms.append((np.sqrt(np.mean((p - r) ** 2)) / np.mean(r)) ** 2)
    expect = 100 * ratio * np.sqrt(np.mean(terms))
    np.testing.assert_allclose(M.ergas(pred, ref, ratio=ratio), expect, rtol=1e-10)
    res = M.evaluate(pred, ref, ratio=ratio)
    np.testing.assert_allclose(res.ergas.sel(band="overall"), expect, rtol=1e-10)
    np.testing.assert_allclose(
        res.ergas.sel(band="nir"), 100 * ratio * np.sqrt(terms[1]), rtol=1e-10
    )


def test_sam_matches_arccos_and_masks_incomplete_spectra():
    pred, ref = make_pair()
    p = np.stack([pred[b].values for b in BANDS]).astype("float64")
    r = np.stack([ref[b].values for b in BANDS]).astype("float64")
    ok = np.isfinite(p).all(0) & np.isfinite(r).all(0)
    cos = (p * r).sum(0) / np.sqrt((p**2).sum(0) * (r**2).sum(0))
    angles = np.degrees(np.arccos(np.clip(cos[ok], -1, 1)))
    np.testing.assert_allclose(M.sam(pred, ref), angles.mean(), rtol=1e-9)
    np.testing.assert_allclose(
        M.sam(pred, ref, units="radians"), np.radians(angles.mean()), rtol=1e-9
    )
    # a DataArray with a band dim gives the same
    np.testing.assert_allclose(
        M.sam(pred.to_dataarray("band"), ref.to_dataarray("band")), angles.mean(), rtol=1e-9
    )


def test_sam_known_angle():
    coords = {"y": [0.0], "x": [0.0, 1.0]}
    ref = xr.Dataset(
        {"a": (("y", "x"), [[1.0, 1.0]]), "b": (("y", "x"), [[0.0, 0.0]])}, coords=coords
    )
    pred = xr.Dataset(
        {"a": (("y", "x"), [[1.0, 2.0]]), "b": (("y", "x"), [[1.0, 0.0]])}, coords=coords
    )
    # pixel 0: 45 degrees; pixel 1: parallel (scale only) -> 0
    np.testing.assert_allclose(M.sam(pred, ref), 22.5, rtol=1e-12)


# ---------------------------------------------------------------------- identities, shifts
def test_identical_inputs():
    _, ref = make_pair()
    res = M.evaluate(ref, ref, ratio=0.25).sel(band="overall")
    assert float(res.rmse) == 0 and float(res.mae) == 0 and float(res.bias) == 0
    np.testing.assert_allclose(res.r, 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.ssim, 1.0, rtol=1e-12)
    assert float(res.sam) == 0.0  # Kahan's formula: exactly zero
    assert float(res.ergas) == 0.0
    assert np.isposinf(float(res.psnr))


@pytest.mark.parametrize("shift", [0.25, -1.5])
def test_known_shift_gives_known_bias(shift, backend):
    _, ref = make_pair()
    if backend == "dask":
        ref = chunked(ref)
    pred = ref + shift
    res = M.evaluate(pred, ref, metrics=("bias", "mae", "rmse", "r")).compute()
    np.testing.assert_allclose(res.bias, shift, rtol=1e-6)
    np.testing.assert_allclose(res.mae, abs(shift), rtol=1e-6)
    np.testing.assert_allclose(res.rmse, abs(shift), rtol=1e-6)
    np.testing.assert_allclose(res.r, 1.0, rtol=1e-9)


def test_scaled_spectrum_has_zero_sam():
    _, ref = make_pair()
    np.testing.assert_allclose(M.sam(ref * 3.0, ref), 0.0, atol=1e-5)


def test_nan_in_either_input_drops_the_pixel():
    coords = {"y": [0.0, 1.0], "x": [0.0, 1.0]}
    ref = xr.DataArray([[1.0, np.nan], [3.0, 4.0]], dims=("y", "x"), coords=coords, name="v")
    pred = xr.DataArray([[2.0, 5.0], [np.nan, 4.0]], dims=("y", "x"), coords=coords, name="v")
    # valid pixels: (0,0) error 1 and (1,1) error 0
    assert float(M.rmse(pred, ref)) == pytest.approx(np.sqrt(0.5))
    assert float(M.mae(pred, ref)) == pytest.approx(0.5)
    assert float(M.bias(pred, ref)) == pytest.approx(0.5)
    all_nan = M.rmse(pred * np.nan, ref)
    assert np.isnan(float(all_nan))


def test_integer_input_masks_declared_nodata():
    coords = {"y": [0.0], "x": [0.0, 1.0, 2.0]}
    ref = xr.DataArray(
        np.array([[10, 0, 30]], dtype="int16"), dims=("y", "x"), coords=coords, name="v"
    )
    ref.attrs["nodata"] = 0
    pred = xr.DataArray(
        np.array([[12, 99, 30]], dtype="int16"), dims=("y", "x"), coords=coords, name="v"
    )
    assert float(M.bias(pred, ref)) == pytest.approx(1.0)  # (2 + 0) / 2, the nodata pixel left out


# ------------------------------------------------------------------------ backends, laziness
def test_numpy_equals_dask_and_is_lazy():
    pred, ref = make_pair()
    eager = M.evaluate(pred, ref, ratio=0.1, dims=("y", "x"))
    with raise_if_dask_computes():
        lazy = M.evaluate(chunked(pred), chunked(ref), ratio=0.1, dims=("y", "x"))
        singles = [
            M.rmse(chunked(pred), chunked(ref)),
            M.ssim(chunked(pred), chunked(ref)),
            M.psnr(chunked(pred), chunked(ref)),
            M.sam(chunked(pred), chunked(ref)),
            M.ergas(chunked(pred), chunked(ref), ratio=0.1),
            M.pearson_r(chunked(pred), chunked(ref)),
        ]
    assert all(dask.is_dask_collection(v.data) for v in lazy.data_vars.values())
    assert all(dask.is_dask_collection(s) for s in singles)
    assert eager.rmse.dims == ("band", "time")
    xr.testing.assert_allclose(eager, lazy.compute())
    xr.testing.assert_allclose(M.ssim(pred, ref), singles[1].compute())


def test_dataarray_with_band_dim_equals_dataset():
    pred, ref = make_pair()
    ds_res = M.evaluate(pred, ref, ratio=0.5)
    da_res = M.evaluate(pred.to_dataarray("band"), ref.to_dataarray("band"), ratio=0.5)
    xr.testing.assert_allclose(ds_res, da_res)
    per = M.rmse(pred.to_dataarray("band"), ref.to_dataarray("band"))
    assert per.dims == ("band",) and list(per.band.values) == list(BANDS)
    np.testing.assert_allclose(per.values, [float(ds_res.rmse.sel(band=b)) for b in BANDS])


def test_single_band_dataarray_evaluate():
    pred, ref = make_pair()
    res = M.evaluate(pred.red, ref.red)
    assert list(res.band.values) == ["red", "overall"]
    assert "ergas" not in res  # no ratio given
    assert np.isnan(res.sam).all()  # undefined for one band
    np.testing.assert_allclose(res.rmse.sel(band="red"), res.rmse.sel(band="overall"))


# --------------------------------------------------------------------------------- tables
def test_format_table_bands_and_methods():
    pred, ref = make_pair()
    res = M.evaluate(pred, ref, ratio=0.25)
    text = M.format_table(res)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["band", "rmse", "mae"]
    assert "psnr [dB]" in lines[0] and "sam [deg]" in lines[0]
    assert [ln.split()[0] for ln in lines[2:]] == [*BANDS, "overall"]
    assert f"{float(res.rmse.sel(band='red')):#.4g}" in lines[2]
    same = M.evaluate(ref, ref, ratio=0.25)
    table = M.format_table({"noisy": res, "perfect": same}, metrics=("rmse", "r", "psnr"))
    rows = table.splitlines()
    assert rows[0].split() == ["method", "rmse", "r", "psnr", "[dB]"]
    assert rows[3].split() == ["perfect", "0.000", "1.000", "inf"]
    assert len({len(r) for r in rows[:2]}) == 1  # header and rule aligned


def test_format_table_refuses_extra_dims():
    pred, ref = make_pair()
    res = M.evaluate(pred, ref, dims=("y", "x"))
    with pytest.raises(InvalidParameterError, match=r"keep the dims \['time'\].*isel\(time=0\)"):
        M.format_table(res)
    assert "overall" in M.format_table(res.isel(time=0))


# --------------------------------------------------------------------------------- errors
def test_error_messages():
    pred, ref = make_pair()
    with pytest.raises(VariableNotFoundError, match=r"Only in ref: \['swir'\]"):
        M.rmse(pred.drop_vars("swir"), ref)
    with pytest.raises(GridMismatchError, match="same coordinates"):
        M.rmse(pred.isel(time=slice(0, 2)), ref)
    with pytest.raises(InvalidParameterError, match=r"Unknown metrics \['nse'\].*'rmse'"):
        M.evaluate(pred, ref, metrics=("rmse", "nse"))
    with pytest.raises(InvalidParameterError, match="ratio=None"):
        M.evaluate(pred, ref, metrics=("ergas",))
    with pytest.raises(InvalidParameterError, match=r"Did you mean ratio=1/16"):
        M.ergas(pred, ref, ratio=16)
    with pytest.raises(InvalidParameterError, match="at least two bands"):
        M.sam(pred.red, ref.red)
    with pytest.raises(InvalidParameterError, match="smaller than the SSIM window"):
        M.ssim(pred.isel(y=slice(0, 5)), ref.isel(y=slice(0, 5)))
    with pytest.raises(InvalidParameterError, match="odd int"):
        M.ssim(pred, ref, win_size=6)
    with pytest.raises(InvalidParameterError, match="must include both spatial dims"):
        M.ssim(pred, ref, dims="time")
    with pytest.raises(InvalidParameterError, match="positive finite"):
        M.psnr(pred, ref, data_range=0)
    with pytest.raises(InvalidParameterError, match="no entry for band 'swir'"):
        M.psnr(pred, ref, data_range={"red": 1.0, "nir": 1.0})
    with pytest.raises(TypeError, match=r"both be xarray\.Datasets"):
        M.rmse(pred.red, ref)
    with pytest.raises(
        MissingDimensionError, match=r"dims=\[.band.\] names dimensions that the bands do not have"
    ):
        M.rmse(pred, ref, dims=("band",))
