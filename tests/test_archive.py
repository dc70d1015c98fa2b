"""Reference selection from an archive (issue 29, refscale/archive.py): footprints, dates,
fingerprints, pixels; folders of GeoTIFFs, plain images and a static STAC catalog; the CLI."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refscale import archive
from refscale.cli import main
from refscale.synthetic import synthetic_revisit_pair

torch.set_num_threads(1)
rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_bounds  # noqa: E402

SIZE = 96
#: lon/lat footprints of three places; place "c" is a UTM GeoTIFF over the same spot as "a" shifted far away
PLACES = {"a": (10.00, 45.00, 10.01, 45.01), "b": (11.00, 46.00, 11.01, 46.01), "d": (-70.0, -30.0, -69.99, -29.99)}


def _pair(seed: int):
    """A revisit pair; seed 2 is transposed (the procedural river would otherwise run alike in every scene)."""
    new, old = synthetic_revisit_pair(SIZE, SIZE, seed=seed)
    if seed == 2:
        new, old = (np.ascontiguousarray(x.transpose(1, 0, 2)) for x in (new, old))
    return new, old


def _elsewhere(seed: int = 3) -> np.ndarray:
    """A scene of another kind altogether: blocks of random colour with texture."""
    rng = np.random.default_rng(seed)
    x = np.kron(rng.random((SIZE // 8, SIZE // 8, 3)), np.ones((8, 8, 1))) * 0.8 + rng.random((SIZE, SIZE, 3)) * 0.2
    return (x * 255).astype(np.uint8)


def _geotiff(path: Path, arr: np.ndarray, bounds, date: str, crs="EPSG:4326") -> Path:
    profile = dict(driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=3, dtype="uint8", crs=crs,
                   transform=from_bounds(*bounds, arr.shape[1], arr.shape[0]))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(arr, -1, 0))
        dst.update_tags(ACQUISITION_DATE=date)
    return path


def _utm_bounds(lonlat):
    from rasterio.warp import transform_bounds

    return transform_bounds("EPSG:4326", "EPSG:32632", *lonlat)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """An archive of synthetic georeferenced scenes (random-looking names) and new scenes."""
    root = tmp_path_factory.mktemp("archive")
    arc, new = root / "archive", root / "new"
    arc.mkdir()
    new.mkdir()
    a_new, a_old = _pair(1)
    b_new, b_old = _pair(2)
    d_new = _elsewhere()
    # place a: its older image (in UTM: the footprint is compared in lon/lat), a copy of the new
    # scene itself, and a later image; place b: an older image elsewhere
    _geotiff(arc / "x17.tif", a_old, _utm_bounds(PLACES["a"]), "2016-05-01", crs="EPSG:32632")
    _geotiff(arc / "x02.tif", a_new, PLACES["a"], "2018-05-01")
    _geotiff(arc / "x33.tif", np.roll(a_new, 3, axis=1), PLACES["a"], "2019-05-01")
    _geotiff(arc / "x41.tif", b_old, PLACES["b"], "2016-05-01")
    _geotiff(new / "a.tif", a_new, PLACES["a"], "2018-05-01")
    _geotiff(new / "d.tif", d_new, PLACES["d"], "2018-05-01")
    plain = root / "plain"
    plain.mkdir()
    for name, arr in (("p1", a_old), ("p2", a_new), ("p3", b_old), ("p4", b_new)):
        Image.fromarray(arr).save(plain / f"{name}.png")
    Image.fromarray(a_new).save(new / "a.png")
    Image.fromarray(d_new).save(new / "d.png")
    return {"root": root, "archive": arc, "new": new, "plain": plain}


def test_dates_and_geojson(tmp_path):
    (tmp_path / "dates.txt").write_text("date_1: 20160120\nimg3.png 2019-02-03\n# comment\nscene-x:2020:01:02\n")
    d = archive.read_dates(tmp_path)
    assert d["img1"] == dt.date(2016, 1, 20) and d["img3.png"] == dt.date(2019, 2, 3) and d["scene-x"] == dt.date(2020, 1, 2)
    gj = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[1, 2], [3, 2], [3, 5], [1, 5], [1, 2]]]}}]}
    assert archive.bbox_of_geojson(gj) == (1, 2, 3, 5)
    assert archive.overlap((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(0.25)
    assert archive.overlap((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_georeferenced_selection(scenes):
    sel = archive.select_reference(scenes["new"] / "a.tif", scenes["archive"])
    assert sel.chosen is not None and sel.chosen.name == "x17.tif", sel.explain()
    by = {c.name: c for c in sel.candidates}
    assert by["x17.tif"].scores["overlap"] > 0.9  # UTM footprint compared in lon/lat
    assert by["x17.tif"].scores["days"] == (dt.date(2018, 5, 1) - dt.date(2016, 5, 1)).days
    assert "not older" in by["x02.tif"].reason and "not older" in by["x33.tif"].reason
    assert "overlap" in by["x41.tif"].reason
    assert sel.pixels_read == 1  # footprints and dates first: only the one candidate left is read


def test_identical_scene_never_chosen(scenes, tmp_path):
    """Without dates, the copy of the new scene passes the metadata stage and is refused by fingerprint."""
    arc = tmp_path / "arc"
    arc.mkdir()
    a_new, a_old = _pair(1)
    Image.fromarray(a_new).save(arc / "same.png")
    Image.fromarray(a_old).save(arc / "older.png")
    sel = archive.select_reference(scenes["new"] / "a.png", arc)
    assert sel.chosen.name == "older.png"
    same = next(c for c in sel.candidates if c.name == "same.png")
    assert "identical" in same.reason and same.fingerprint == sel.new.fingerprint


def test_pixels_alone(scenes):
    sel = archive.select_reference(scenes["new"] / "a.png", scenes["plain"])
    assert sel.chosen.name == "p1.png", sel.explain()
    assert sel.chosen.scores["agreement"] > 0.5
    assert next(c for c in sel.candidates if c.name == "p2.png").reason.startswith("identical")
    # a scene from elsewhere: no suitable reference
    none = archive.select_reference(scenes["new"] / "d.png", scenes["plain"])
    assert none.chosen is None and all(c.reason for c in none.candidates)


def test_elsewhere_by_footprint(scenes):
    sel = archive.select_reference(scenes["new"] / "d.tif", scenes["archive"])
    assert sel.chosen is None and sel.pixels_read == 0


def test_stac_catalog(scenes, tmp_path):
    pystac = pytest.importorskip("pystac")
    a_new, a_old = _pair(1)
    b_new, b_old = _pair(2)
    cat = pystac.Catalog(id="c", description="test")
    for name, arr, place, date in (("old-a", a_old, "a", "2016-05-01"), ("old-b", b_old, "b", "2016-05-01"),
                                   ("later-a", a_new, "a", "2019-01-01")):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
        w, s, e, n = PLACES[place]
        item = pystac.Item(id=name, geometry={"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                           bbox=[w, s, e, n], datetime=dt.datetime.fromisoformat(date), properties={"eo:cloud_cover": 10})
        item.add_asset("visual", pystac.Asset(href=str(tmp_path / f"{name}.png"), media_type=pystac.MediaType.PNG))
        cat.add_item(item)
    cat.normalize_hrefs(str(tmp_path / "stac"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    sel = archive.select_reference(scenes["new"] / "a.png", tmp_path / "stac" / "catalog.json", date="2018-05-01",
                                   bounds=PLACES["a"])
    assert sel.chosen is not None and sel.chosen.name == "old-a", sel.explain()
    assert sel.chosen.valid == pytest.approx(0.9)


def test_cli_select_ref(scenes, capsys):
    code = main(["select-ref", str(scenes["new"] / "a.tif"), "--archive", str(scenes["archive"]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and Path(out["chosen"]).name == "x17.tif"
    assert out["candidates"][0]["path"] == out["chosen"] and out["candidates"][0]["suitable"]
    assert {"overlap", "days", "agreement", "score"} <= set(out["candidates"][0]["scores"])
    code = main(["select-ref", str(scenes["new"] / "d.tif"), "--archive", str(scenes["archive"]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["chosen"] is None and out["reason"] == "no suitable reference"
    code = main(["select-ref", str(scenes["new"] / "a.tif"), "--archive", str(scenes["archive"])])
    text = capsys.readouterr().out
    assert code == 0 and "reference x17.tif" in text


def test_encode_decode_with_ref_archive(scenes, tmp_path, capsys):
    """encode --ref-archive records the chosen reference (fingerprint in the container, name beside
    it); decode --ref-archive finds it by fingerprint, here in an archive folder without the record."""
    out = tmp_path / "a.rsc"
    code = main(["encode", str(scenes["new"] / "a.png"), "--ref-archive", str(scenes["plain"]), "-m", "refscale-x2",
                 "--no-verify", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    rec = json.loads(archive.sidecar_path(out).read_text())
    assert rec["reference"] == "p1.png"
    from refscale.container import Packet

    assert Packet.from_bytes(out.read_bytes()).ref_hash == rec["fingerprint"]
    archive.sidecar_path(out).unlink()
    code = main(["decode", str(out), "--ref-archive", str(scenes["plain"]), "-o", str(tmp_path / "a.png")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "a.png").is_file()
    # a scene without a suitable reference: refused, or coded with the fallback model
    code = main(["encode", str(scenes["new"] / "d.png"), "--ref-archive", str(scenes["plain"]), "-o", str(tmp_path / "d.rsc"),
                 "--refuse-without-ref"])
    assert code == 2 and "no suitable reference" in capsys.readouterr().err
    code = main(["encode", str(scenes["new"] / "d.png"), "--ref-archive", str(scenes["plain"]), "-o", str(tmp_path / "d.rsc")])
    assert code == 0 and Packet.from_bytes((tmp_path / "d.rsc").read_bytes()).model == "bicubic-x2"
