from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from xfusion import apply_model
from xfusion.config import EngineConfig
from xfusion.engine import ModelSpec, map_blocks_halo, map_model
from xfusion.engine.tiling import block_halos, split_axis, tiles_2d
from xfusion.errors import InvalidParameterError
from xfusion.testing import raise_if_dask_computes

torch = pytest.importorskip("torch")
from xfusion.testing.models import ConvModel, IdentityModel, UpsampleModel


def _direct(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(np.nan_to_num(x).astype(np.float32))).numpy()


@pytest.fixture
def image(rng):
    return rng.normal(size=(2, 1, 37, 45)).astype(np.float32)


# --------------------------------------------------------------------------- tiling


@given(n=st.integers(1, 200), tile=st.integers(1, 64), overlap=st.integers(0, 63))
@settings(max_examples=200, deadline=None)
def test_split_axis_covers_every_index(n, tile, overlap):
    overlap = min(overlap, tile - 1)
    spans = split_axis(n, tile, overlap)
    covered = np.zeros(n, int)
    for s, e in spans:
        assert 0 <= s < e <= n
        assert e - s == min(tile, n)
        covered[s:e] += 1
    assert covered.min() >= 1


@given(h=st.integers(1, 80), w=st.integers(1, 80), tile=st.integers(1, 40),
       halo=st.integers(0, 6), sides=st.tuples(*[st.booleans()] * 4))
@settings(max_examples=200, deadline=None)
def test_tiles_own_each_interior_pixel_once(h, w, tile, halo, sides):
    halo_sides = tuple(halo if s else 0 for s in sides)
    tiles = tiles_2d((h, w), halo_sides, tile=tile, halo=halo)
    owned = np.zeros((h, w), int)
    nrows = h + halo_sides[0] + halo_sides[1]
    ncols = w + halo_sides[2] + halo_sides[3]
    for t in tiles:
        owned[t.owned] += 1
        # owned ⊂ core, and read = core ± halo clipped to the block
        assert t.core[0].start <= t.owned[0].start and t.owned[0].stop <= t.core[0].stop
        assert t.read[0].start == max(0, t.core[0].start + halo_sides[0] - halo)
        assert t.read[0].stop == min(nrows, t.core[0].stop + halo_sides[0] + halo)
        assert t.read[1].stop == min(ncols, t.core[1].stop + halo_sides[2] + halo)
        assert t.offset == (t.core[0].start + halo_sides[0] - t.read[0].start,
                            t.core[1].start + halo_sides[2] - t.read[1].start)
    assert (owned == 1).all()


def test_block_halos_edges():
    assert block_halos((0, 0), (1, 1), 3) == (0, 0, 0, 0)
    assert block_halos((1, 0), (3, 2), 3) == (3, 3, 0, 3)
    assert block_halos((2, 1), (3, 2), 3) == (3, 0, 3, 0)


# --------------------------------------------------------------------------- generic blocks


def _box_sum(a, *, halo_sides, r):
    """3x3-style box sum of radius r with zero outside the image: needs halo r."""
    top, bottom, left, right = halo_sides
    p = np.pad(a, ((0, 0), (r, r), (r, r)))
    out = np.zeros_like(a)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out += p[:, r + dy:r + dy + a.shape[1], r + dx:r + dx + a.shape[2]]
    return out[:, top:a.shape[1] - bottom, left:a.shape[2] - right]


@pytest.mark.parametrize("chunks", [(5, 7), (12, 12), (3, 40), (40, 4)])
def test_map_blocks_halo_equals_global(rng, chunks):
    a = rng.normal(size=(2, 23, 29))
    expected = _box_sum(a, halo_sides=(0, 0, 0, 0), r=2)
    d = da.from_array(a, chunks=(1, *chunks))
    out = map_blocks_halo(_box_sum, d, halo=2, dtype=a.dtype, kwargs={"r": 2}, method="box")
    assert dask.is_dask_collection(out)
    assert out.name.startswith("xfusion.box-")
    np.testing.assert_allclose(out.compute(), expected, rtol=1e-12)
    # halo smaller than the operator's reach gives different (wrong) seams: the test can fail
    bad = map_blocks_halo(_box_sum, d, halo=1, dtype=a.dtype, kwargs={"r": 2}, method="box")
    if len(d.chunks[1]) > 1 or len(d.chunks[2]) > 1:
        assert not np.allclose(bad.compute(), expected)


def test_map_blocks_halo_numpy_path(rng):
    a = rng.normal(size=(1, 10, 10))
    out = map_blocks_halo(_box_sum, a, halo=1, dtype=a.dtype, kwargs={"r": 1})
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, _box_sum(a, halo_sides=(0, 0, 0, 0), r=1))


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("chunks", [(7, 9), (16, 45), (37, 5), (37, 45)])
@pytest.mark.parametrize("tile", [None, 4, 11])
def test_identity_any_chunking(image, chunks, tile):
    x = da.from_array(image, chunks=(1, 1, *chunks))
    out = map_model(x, IdentityModel(), config=EngineConfig(tile=tile))
    np.testing.assert_array_equal(out.compute(), image)


@pytest.mark.parametrize("chunks", [(6, 8), (13, 45), (37, 7)])
@pytest.mark.parametrize("tile", [None, 5, 16])
def test_conv_tiled_equals_untiled(image, chunks, tile):
    model = ConvModel(layers=3)
    expected = _direct(model, image)
    x = da.from_array(image, chunks=(1, 1, *chunks))
    out = map_model(x, model, config=EngineConfig(tile=tile, batch_size=3)).compute()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_conv_with_too_small_halo_differs(image):
    """A model whose declared halo is below its receptive field shows seams: the
    equality test above is able to fail."""
    model = ConvModel(layers=3, declared_halo=1)
    expected = _direct(model, image)
    x = da.from_array(image, chunks=(1, 1, 10, 10))
    out = map_model(x, model).compute()
    assert not np.allclose(out, expected, atol=1e-4)


def test_user_halo_may_only_increase(image):
    model = ConvModel(layers=3)
    with pytest.raises(InvalidParameterError, match="smaller than the receptive field"):
        map_model(da.from_array(image, chunks=(1, 1, 10, 10)), model,
                  config=EngineConfig(halo=2))
    bigger = map_model(da.from_array(image, chunks=(1, 1, 10, 10)), model,
                       config=EngineConfig(halo=6)).compute()
    np.testing.assert_allclose(bigger, _direct(model, image), rtol=1e-5, atol=1e-5)


def test_memory_budget_batches(image):
    model = ConvModel(layers=2)
    x = da.from_array(image, chunks=(2, 1, 20, 20))
    small = map_model(x, model, config=EngineConfig(tile=4, memory_budget=1)).compute()
    big = map_model(x, model, config=EngineConfig(tile=4)).compute()
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunks", [(8, 9), (37, 45)])
def test_scale_factor_upsampling(image, chunks):
    model = UpsampleModel(scale=2, conv=True)
    expected = _direct(model, image)
    x = da.from_array(image, chunks=(1, 1, *chunks))
    out = map_model(x, model, config=EngineConfig(tile=6))
    assert out.chunks[2] == tuple(2 * c for c in x.chunks[2])
    np.testing.assert_allclose(out.compute(), expected, rtol=1e-5, atol=1e-5)


def test_nan_in_nan_out(image):
    img = image.copy()
    img[0, 0, 3, 4] = np.nan
    img[1, 0, 30:, 40:] = np.nan
    out = map_model(da.from_array(img, chunks=(1, 1, 10, 10)), ConvModel(layers=1)).compute()
    assert np.isnan(out[0, 0, 3, 4]) and np.isnan(out[1, 0, 30:, 40:]).all()
    assert np.isfinite(out).sum() == np.isfinite(img).sum()
    kept = map_model(da.from_array(img, chunks=(1, 1, 10, 10)), ConvModel(layers=1),
                     config=EngineConfig(nan_policy="keep")).compute()
    assert np.isfinite(kept).all()


@pytest.mark.parametrize("blend", ["linear", "cosine"])
def test_blending_identity_exact(image, blend):
    out = map_model(da.from_array(image, chunks=(1, 1, 20, 20)), IdentityModel(),
                    config=EngineConfig(tile=8, overlap=3, blend=blend)).compute()
    np.testing.assert_allclose(out, image, rtol=1e-6)


def test_blending_smooths_seams(image):
    """With a halo below the receptive field, blending keeps the error smaller than hard seams."""
    model = ConvModel(layers=4, declared_halo=1)
    expected = _direct(model, image)
    x = da.from_array(image, chunks=(1, 1, 37, 45))
    hard = map_model(x, model, config=EngineConfig(tile=10)).compute()
    soft = map_model(x, model, config=EngineConfig(tile=10, overlap=6, blend="cosine")).compute()
    assert np.abs(soft - expected).max() < np.abs(hard - expected).max()


def test_model_spec_loads_once_and_tokens(image, tmp_path):
    from safetensors.torch import save_file

    model = ConvModel(layers=2, seed=3)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    spec = ModelSpec(name="conv", builder="xfusion.testing.models:conv_model",
                     kwargs={"layers": 2, "seed": None}, weights=str(path), halo=2)
    x = da.from_array(image, chunks=(1, 1, 10, 10))
    a = map_model(x, spec, method="unit")
    b = map_model(x, spec, method="unit")
    c = map_model(x + 1, spec, method="unit")
    assert a.name == b.name and a.name != c.name and a.name.startswith("xfusion.unit-")
    np.testing.assert_allclose(a.compute(), _direct(model, image), rtol=1e-5, atol=1e-5)
    # the graph holds the spec, never the module
    graph = dict(a.__dask_graph__())
    assert not any(isinstance(v, torch.nn.Module) for v in graph.values())


def test_in_memory_module_is_one_graph_node(image):
    x = da.from_array(image, chunks=(1, 1, 10, 10))
    out = map_model(x, ConvModel(layers=1))
    keys = [k for k in dict(out.__dask_graph__()) if isinstance(k, str)
            and k.startswith("xfusion.model-")]
    assert len(keys) == 1


def test_module_without_halo_is_refused(image):
    with pytest.raises(InvalidParameterError, match="halo"):
        map_model(image, torch.nn.Conv2d(1, 1, 3, padding=1))


def test_bad_device_string():
    with pytest.raises(InvalidParameterError, match="Unknown device"):
        EngineConfig(device="gpu0")


def test_wrong_output_shape_message(image):
    model = IdentityModel()
    model.scale = 2  # lies about its scale
    with pytest.raises(InvalidParameterError, match="returned shape"):
        map_model(image, model)


# --------------------------------------------------------------------------- xarray layer


def _georef(arr, crs="EPSG:32633"):
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    gbox = GeoBox(arr.shape[-2:], Affine(30, 0, 500000, 0, -30, 4100000), crs)
    coords = xr_coords(gbox)
    dims = ("time", "y", "x") if gbox.crs.projected else ("time", "latitude", "longitude")
    coords = xr_coords(gbox, dims=dims[1:])
    coords["time"] = np.array(["2020-01-01", "2020-01-09"], dtype="datetime64[ns]")
    return xr.DataArray(arr, dims=dims, coords=coords, name="lst", attrs={"units": "K"})


def test_apply_model_keeps_coords_and_is_lazy(image, backend):
    obj = _georef(image[:, 0])
    if backend == "dask":
        obj = obj.chunk({"time": 1, "y": 10, "x": 12})
    model = ConvModel(layers=2)
    with raise_if_dask_computes():
        out = apply_model(obj, model, method="unit")
    assert out.dims == obj.dims and out.name == "lst" and out.attrs == {"units": "K"}
    xr.testing.assert_identical(out.coords.to_dataset(), obj.coords.to_dataset())
    assert out.odc.geobox == obj.odc.geobox
    if backend == "dask":
        assert any(str(k).startswith("xfusion.unit-") for k in out.data.dask.layers)
    np.testing.assert_allclose(out.values, _direct(model, image)[:, 0], rtol=1e-5, atol=1e-5)


def test_apply_model_scale_geobox(image):
    obj = _georef(image[:, 0]).chunk({"y": 16, "x": 16})
    out = apply_model(obj, UpsampleModel(scale=2), method="sr")
    assert out.odc.geobox.resolution.x == 15 and out.shape == (2, 74, 90)
    assert out.odc.geobox.extent == obj.odc.geobox.extent
    np.testing.assert_array_equal(out.values[:, ::2, ::2], image[:, 0])


def test_apply_model_geographic_dims(image):
    obj = _georef(image[:, 0], crs="EPSG:4326")
    obj = obj.assign_coords(latitude=np.linspace(41, 40, 37), longitude=np.linspace(10, 11, 45))
    out = apply_model(obj.chunk({"latitude": 10}), IdentityModel())
    assert out.dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(out.values, image[:, 0])


def test_apply_model_channel_dims(image, rng):
    obj = _georef(rng.normal(size=(2, 37, 45)).astype("float32"))
    stack = xr.concat([obj, obj * 2], dim="band").assign_coords(band=["a", "b"])
    out = apply_model(stack.chunk({"y": 20}), IdentityModel(out_channels=2), channel_dim="band",
                      out_channel_dim="band", out_channels=["a", "b"])
    assert out.dims == ("time", "band", "y", "x")
    xr.testing.assert_allclose(out.transpose(*stack.dims), stack)


# --------------------------------------------------------------------------- distributed


def test_local_cluster(image, tmp_path):
    distributed = pytest.importorskip("distributed")
    from safetensors.torch import save_file

    model = ConvModel(layers=2, seed=5)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    spec = ModelSpec(name="conv", builder="xfusion.testing.models:conv_model",
                     kwargs={"layers": 2, "seed": None}, weights=str(path), halo=2)
    expected = _direct(model, image)
    x = da.from_array(image, chunks=(1, 1, 12, 15))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        from_spec = client.compute(map_model(x, spec)).result()
        from_module = client.compute(map_model(x, model)).result()
    np.testing.assert_allclose(from_spec, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_module, expected, rtol=1e-5, atol=1e-5)


def test_blending_leaves_no_seam_at_chunk_borders(rng):
    """With blending, tiles extend across chunk borders (chunks carry halo + overlap), so the
    error at a chunk border is no larger than inside the chunks: no hard seam there
    (added with super_resolve/harmonize, whose receptive fields exceed a sane halo)."""
    img = rng.normal(size=(1, 1, 60, 60)).astype(np.float32)
    model = ConvModel(layers=6, declared_halo=2)
    expected = _direct(model, img)
    cfg = EngineConfig(tile=12, overlap=4, blend="cosine")
    out = map_model(da.from_array(img, chunks=(1, 1, 30, 30)), model, config=cfg).compute()
    err = np.abs(out - expected)[0, 0]
    border = np.zeros(err.shape, bool)
    border[29:31, :] = True
    border[:, 29:31] = True
    assert 0 < err[border].max() <= err[~border].max()
    whole = map_model(img, model, config=cfg)  # one block: the same tiling inside
    assert np.abs(whole - expected).max() > 0


@pytest.mark.parametrize("chunks", [(1, 1, 20, 20), (1, 1, 13, 17)])
def test_blending_across_chunks_with_scale_is_exact_for_identity(image, chunks):
    out = map_model(da.from_array(image, chunks=chunks), UpsampleModel(scale=2),
                    config=EngineConfig(tile=8, overlap=3, blend="linear")).compute()
    np.testing.assert_allclose(out, image.repeat(2, axis=2).repeat(2, axis=3), rtol=1e-6)


def test_halo_larger_than_the_image(image):
    """A model whose halo exceeds the image (a 72-px U-Net on a 37 x 45 scene) runs on any
    chunking: short axes become one chunk, which needs no halo."""
    model = ConvModel(layers=2, declared_halo=50)
    expected = _direct(model, image)
    out = map_model(da.from_array(image, chunks=(1, 1, 10, 20)), model,
                    config=EngineConfig(tile=16)).compute()
    np.testing.assert_allclose(out, expected, atol=1e-5)
