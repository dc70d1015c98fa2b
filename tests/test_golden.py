"""Bytes pinned across refactors (issue 28): for fixed synthetic inputs, the sha256 of the .rsc
container (LR, side tensors, record) and of the decoded reconstruction (float32 bytes) of every
catalogue architecture at tiny size, of the shipped models, of a lossy still codec and of a
16-bit georeferenced raster, compared to ``golden_catalogue.json``.

Float results may differ between CPU instruction sets (oneDNN's kernels), so the digests hold for
the CPU capability they were computed on (``torch.backends.cpu.get_cpu_capability()``, recorded in
the file); elsewhere the test skips. The bitstreams of the inter-frame codecs depend on the
codec build too (PyAV and libavcodec, recorded as ``codec_build``): with another build the entries
whose container holds an inter-frame LR are left out of the comparison (``tests/test_inter.py``
pins those bitstreams per build). To recompute after an intended change of the format or a
model: ``python tests/test_golden.py`` (and say why in the commit).
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_image
from refscale import pipeline, zoo
from refscale.format import codecs
from refscale.format.container import Packet

GOLDEN = Path(__file__).with_name("golden_catalogue.json")
SHIPPED = {  # shipped weights -> (height, width, codec, quality); every shipped model (a test checks)
    "irn-x2-oscd": (40, 52, None, None),
    "irn-x2-natural": (40, 52, None, None),
    "irn-x4-oscd": (48, 56, None, None),
    "fgrn-x2-oscd": (40, 52, None, None),
    "fgrn-x2-natural": (40, 52, None, None),
    "fgrn-x4-oscd": (48, 56, None, None),
    "fgrn-x4-natural": (48, 56, None, None),
    "refscale-x2-oscd": (48, 56, None, None),
    "refscale-x4-oscd": (48, 56, None, None),
    "enhance-x1-hevc-oscd": (24, 28, None, None),
    "enhance-x2-hevc-oscd": (48, 56, None, None),
    "enhance-x1-avif-oscd": (24, 28, None, None),
    "enhance-x2-avif-oscd": (48, 56, None, None),
    "irn-x2-natural/jpeg": (40, 52, "jpeg", 80),
    "irn-x2-natural/webp": (40, 52, "webp", 70),
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


#: the digests whose container holds an inter-frame LR (filled by :func:`_run`)
INTER_FRAME: set[str] = set()


def codec_build() -> str:
    """PyAV's and libavcodec's versions: what the inter-frame bitstreams depend on."""
    from refscale.format import inter

    return inter.identity("hevc-inter").split(";", 1)[1]


def _run(case: str, model, hr, ref, **kw) -> dict:
    with torch.no_grad():
        packet = pipeline.encode(model, hr, ref, **kw)
        data = packet.to_bytes()
        out = pipeline.decode(model, Packet.from_bytes(data, lr_ref=packet.lr_ref), ref, seed=0)
    if codecs.needs_reference(packet.codec):
        INTER_FRAME.add(case)
    return {"container": _sha(data), "decoded": _sha(out.contiguous().numpy().tobytes())}


def tiny_digests() -> dict:
    from test_conformance import CASES, build, inputs, odd_size

    out = {}
    for case in sorted(CASES):
        model = build(case)
        hr, ref = inputs(model, *odd_size(model))
        out[case] = _run(case, model, hr, ref, precision="fp32", verify=False)
    return out


def shipped_digests() -> dict:
    out = {}
    for case, (h, w, codec, quality) in SHIPPED.items():
        model = zoo.load(case.split("/")[0])
        hr = synthetic_image(h, w, seed=11)
        ref = (synthetic_image(h, w, seed=12) * 0.3 + hr * 0.7) if model.needs_reference else None
        out[case] = _run(case, model, hr, ref, codec=codec, quality=quality)  # the defaults: precision, verifying encoder
    return out


def raster_digests(tmp: Path) -> dict:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    from refscale.io import raster

    rgb = synthetic_image(36, 44, seed=5)[0].numpy()
    arr = np.stack([np.rint(200 + 3500 * p ** 1.5) for p in rgb[::-1]]).astype(np.uint16)
    arr[:, :3, :] = 0  # a nodata border
    path = tmp / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=44, height=36, count=3, dtype="uint16", nodata=0,
                       crs="EPSG:32631", transform=from_origin(399960.0, 5000040.0, 10.0, 10.0)) as dst:
        dst.write(arr)
    img = raster.read_raster(path)
    model = zoo.build("bicubic-x2")
    with torch.no_grad():
        packet = pipeline.encode(model, img)
        data = packet.to_bytes()
        back = Packet.from_bytes(data)
        out = pipeline.decode(model, back, seed=0)
    raster.write_decoded(out, tmp / "out.tif", back.raster)
    with rasterio.open(tmp / "out.tif") as src:  # the pixels, nodata and georeferencing written back
        written = src.read().tobytes() + repr((src.dtypes, src.nodata, src.crs.to_wkt(), tuple(src.transform))).encode()
    return {"raster-bicubic-x2": {"container": _sha(data), "decoded": _sha(written)}}


def all_digests(tmp: Path) -> dict:
    return {**tiny_digests(), **shipped_digests(), **raster_digests(tmp)}


@pytest.mark.slow
def test_containers_and_reconstructions_are_pinned(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    if golden["cpu_capability"] != torch.backends.cpu.get_cpu_capability():
        pytest.skip(f"digests computed on {golden['cpu_capability']}, this CPU is {torch.backends.cpu.get_cpu_capability()}")
    here = all_digests(tmp_path)
    assert set(here) == set(golden["digests"])
    if golden.get("codec_build") != codec_build():  # inter-frame bitstreams: pinned per build in test_inter.py
        here = {k: v for k, v in here.items() if k not in INTER_FRAME}
    assert {k: v for k, v in here.items() if v != golden["digests"][k]} == {}


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        digests = all_digests(Path(d))
    GOLDEN.write_text(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                                  "codec_build": codec_build(), "digests": digests}, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests)} digests -> {GOLDEN.name}")


def test_every_shipped_model_is_pinned():
    assert {case.split("/")[0] for case in SHIPPED} == set(zoo.weights_cards())
