"""pipeline.encode / decode against tiny toy rescalers (independent of the real models).

The toy models are defined here and imported by test_cli.py and test_fuzz.py:

* ``ToyAvg`` (``toyavg-x2``): LR = 2x2 average, HR = nearest upsampling; one parameter.
* ``ToyRef`` (``toyref-x2``): a *reference* model, stochastic, alignment 4, that emits an integer
  side map ``smap`` (float32 dtype, stride 4) and uses it, the reference and seeded noise to
  rebuild. Its receptive field is a few pixels, so tiled and untiled results must agree.
"""
from __future__ import annotations

from dataclasses import replace

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_image
from refscale import ops, pipeline, zoo
from refscale.container import Packet
from refscale.errors import ContainerError, InputError, ModelError
from refscale.metrics import psnr, to_uint8
from refscale.protocol import Rescaler, SideSpec, register

TESTS = Path(__file__).resolve().parent


class ToyAvg(Rescaler):
    arch = "toyavg"

    def __init__(self, scale: int = 2, gain: float = 1.0):
        super().__init__(scale, gain=gain)
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def downscale(self, hr, ref=None):
        return F.avg_pool2d(hr, self.scale) * self.gain, {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest")


class ToyRef(Rescaler):
    arch = "toyref"
    needs_reference = True
    stochastic = True
    levels = 7

    def __init__(self, scale: int = 2):
        super().__init__(scale)
        self.mix = nn.Parameter(torch.tensor(0.5))

    @property
    def alignment(self) -> int:
        return 2 * self.scale

    def side_spec(self):
        return {"smap": SideSpec(1, self.alignment, "float32")}

    def downscale(self, hr, ref=None):
        self.check_reference(ref)
        diff = (hr - ref).abs().mean(1, keepdim=True)
        smap = (F.avg_pool2d(diff, self.alignment) * 4 * self.levels).clamp(0, self.levels).round()
        return F.avg_pool2d(hr, self.scale), {"smap": smap}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        self.check_reference(ref)
        assert side["smap"].dtype == torch.float32, "side info must come back in the dtype downscale produced"
        up = F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        weight = F.interpolate(side["smap"] / self.levels, scale_factor=self.alignment, mode="nearest")
        ref_low = F.interpolate(F.avg_pool2d(ref, self.scale), scale_factor=self.scale, mode="bilinear", align_corners=False)
        noise = torch.randn(up.shape, generator=generator) * 0.02 * temperature
        return up + (1 - weight) * self.mix * 2 * (ref - ref_low) + noise


register("toyavg-x2", scale=2)(ToyAvg)
register("toyref-x2", scale=2)(ToyRef)


def pair(h, w, seed=0):
    """An image and a reference that matches it on the left half and differs on the right."""
    hr = synthetic_image(h, w, seed)
    ref = hr.clone()
    ref[..., w // 2:] = synthetic_image(h, w, seed + 1)[..., w // 2:]
    return hr, ref


# ----------------------------------------------------------------------------- any size
@pytest.mark.parametrize("size", [(37, 53), (32, 32), (5, 9)])
def test_any_size_round_trip_is_padded_and_cropped_invisibly(size):
    model = ToyAvg()
    hr = synthetic_image(*size)
    packet = model.encode(hr, verify=False)
    ph, pw = (size[0] + 1) // 2 * 2, (size[1] + 1) // 2 * 2
    assert packet.size == size and packet.padded_size == (ph, pw)
    assert packet.lr.dtype == np.uint8 and packet.lr.shape == (ph // 2, pw // 2, 3)
    out = model.decode(Packet.from_bytes(packet.to_bytes()))
    assert out.shape == (1, 3, *size) and out.dtype == torch.float32
    # the LR in the packet is the model's LR rounded to 8 bits (of the reflect-padded image)
    padded = F.pad(hr, (0, pw - size[1], 0, ph - size[0]), mode="reflect")
    expected = to_uint8(F.avg_pool2d(padded, 2))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(packet.lr, expected)
    assert float(psnr(out, hr)) > 15  # nearest upsampling of a 2x2 average


def test_inputs_may_be_arrays_and_paths(tmp_path):
    from refscale.imageio import write_image

    model = ToyAvg()
    hr = synthetic_image(20, 24)
    arr = to_uint8(hr)[0].permute(1, 2, 0).numpy()
    write_image(hr, tmp_path / "hr.png")
    a = model.encode(arr)
    b = model.encode(tmp_path / "hr.png")
    c = model.encode(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.lr, c.lr)


def test_out_of_range_input_is_refused():
    with pytest.raises(InputError, match=r"\[0,1\]"):
        ToyAvg().encode(synthetic_image(8, 8) * 255)


def test_no_grad_and_model_state_restored():
    model = ToyAvg().train()
    hr = synthetic_image(16, 16).requires_grad_(True)
    out = model.decode(model.encode(hr))
    assert not out.requires_grad
    assert model.training  # the pipeline ran it in eval mode and put it back


# ----------------------------------------------------------------------------- reference checks
def test_reference_model_without_reference_is_a_model_error():
    hr, _ = pair(16, 16)
    with pytest.raises(ModelError, match="reference"):
        ToyRef().encode(hr)
    model = ToyRef()
    hr, ref = pair(16, 16)
    packet = model.encode(hr, ref)
    with pytest.raises(ModelError, match="reference"):
        model.decode(packet)


def test_reference_of_another_size_is_refused_with_a_hint_or_resampled():
    model = ToyRef()
    hr, _ = pair(32, 32)
    _, ref = pair(30, 32)
    with pytest.raises(InputError, match="resample"):
        model.encode(hr, ref)
    packet = model.encode(hr, ref, resample_ref=True)
    assert packet.size == (32, 32)
    model.decode(packet, ref)  # the recorded reference: resampled as the encoder did, unasked
    with pytest.raises(InputError, match="resample"):
        model.decode(packet, ref, resample_ref=False)
    good_ref = pair(32, 32)[1]
    packet = model.encode(hr, good_ref)
    with pytest.raises(InputError, match="not the one"):  # another reference is refused first
        model.decode(packet, ref)
    with pytest.raises(InputError, match="32x30 but the image is 32x32"), pytest.warns(UserWarning):  # width x height
        model.decode(packet, ref, allow_other_reference=True)


def test_reference_given_to_a_model_without_one_is_ignored_with_a_warning():
    model = ToyAvg()
    hr, ref = pair(16, 16)
    with pytest.warns(UserWarning, match="takes no reference"):
        with_ref = model.encode(hr, ref)
    assert np.array_equal(with_ref.lr, model.encode(hr).lr)


# ----------------------------------------------------------------------------- side information
def test_side_map_round_trips_with_its_dtype_and_shape():
    model = ToyRef()
    hr, ref = pair(37, 41)
    packet = model.encode(hr, ref)
    smap = packet.side["smap"]
    assert np.issubdtype(smap.dtype, np.integer) and smap.shape == (1, 1, 40 // 4, 44 // 4)
    assert smap.max() > smap.min()  # the map carries information
    back = Packet.from_bytes(packet.to_bytes())
    assert np.array_equal(back.side["smap"], smap) and back.side_dtypes == {"smap": "float32"}
    out = model.decode(back, ref, temperature=0.0)  # ToyRef asserts the float32 dtype came back
    assert out.shape == (1, 3, 37, 41)


def test_non_integer_side_info_is_refused():
    class Bad(ToyRef):
        def downscale(self, hr, ref=None):
            lr, side = super().downscale(hr, ref)
            return lr, {"smap": side["smap"] + 0.5}

    hr, ref = pair(16, 16)
    with pytest.raises(ModelError, match="not integer-valued"):
        Bad().encode(hr, ref)


@pytest.mark.parametrize("change,match", [
    (lambda side: {}, "side_spec declares"),                                   # undeclared absence
    (lambda side: {**side, "extra": side["smap"]}, "side_spec declares"),      # undeclared tensor
    (lambda side: {"smap": side["smap"].to(torch.int16)}, "float32"),          # another dtype
    (lambda side: {"smap": side["smap"].repeat(1, 2, 1, 1)}, "smap"),          # another channel count
    (lambda side: {"smap": F.avg_pool2d(side["smap"], 2).round()}, "smap"),    # another stride
])
def test_side_tensors_must_be_the_declared_ones(change, match):
    class Liar(ToyRef):
        def downscale(self, hr, ref=None):
            lr, side = super().downscale(hr, ref)
            return lr, change(side)

    hr, ref = pair(16, 16)
    with pytest.raises(ModelError, match=match):
        Liar().encode(hr, ref, verify=False)


def test_bad_side_declarations_are_refused():
    class Odd(ToyRef):
        def side_spec(self):
            return {"smap": SideSpec(1, 3, "float32")}  # 3 does not divide the alignment 4

    with pytest.raises(ModelError, match="divides the alignment"):
        Odd().encode(*pair(16, 16))


def test_decode_does_not_run_downscale():
    class Counting(ToyRef):
        calls = 0

        def downscale(self, hr, ref=None):
            type(self).calls += 1
            return super().downscale(hr, ref)

    model = Counting()
    hr, ref = pair(16, 16)
    packet = model.encode(hr, ref, verify=False)
    Counting.calls = 0
    model.decode(packet, ref)
    assert Counting.calls == 0


def test_packet_whose_side_info_does_not_fit_the_model_is_refused():
    model = ToyRef()
    hr, ref = pair(16, 16)
    packet = model.encode(hr, ref)
    packet = replace(packet, side={"other": packet.side["smap"]})
    with pytest.raises(ContainerError, match="does not match model"):
        model.decode(packet, ref)
    packet = model.encode(hr, ref)
    packet = replace(packet, side={"smap": np.zeros((1, 2, 4, 4), np.uint8)})
    with pytest.raises(ContainerError, match="smap"):
        model.decode(packet, ref)


# ----------------------------------------------------------------------------- model identity
def test_decoding_with_other_weights_is_refused_unless_allowed():
    a, b = ToyAvg(gain=1.0), ToyAvg(gain=0.9)
    b.name = "toyavg-x2-other"
    packet = a.encode(synthetic_image(16, 16))
    with pytest.raises(ModelError) as err:
        b.decode(packet)
    msg = str(err.value)
    assert "toyavg-x2" in msg and "toyavg-x2-other" in msg and "\n" not in msg
    assert a.weights_hash()[:12] in msg and b.weights_hash()[:12] in msg
    assert b.decode(packet, allow_mismatch=True).shape == (1, 3, 16, 16)


def test_scale_mismatch_is_refused_even_when_allowed():
    packet = ToyAvg(scale=2).encode(synthetic_image(16, 16))
    with pytest.raises(ModelError, match="x2"):
        ToyAvg(scale=4).decode(packet, allow_mismatch=True)


def test_decode_accepts_container_bytes():
    model = ToyAvg()
    packet = model.encode(synthetic_image(16, 16))
    assert torch.equal(model.decode(packet.to_bytes()), model.decode(packet))


# ----------------------------------------------------------------------------- tiling
def test_tiled_equals_untiled_and_side_maps_are_stitched():
    model = ToyRef()
    hr, ref = pair(70, 90)
    whole = model.encode(hr, ref, tile=0)
    tiled = model.encode(hr, ref, tile=16, overlap=8)
    assert whole.tiles is None and tiled.tiles == {"tile": 16, "overlap": 8}
    assert np.array_equal(whole.side["smap"], tiled.side["smap"])
    assert np.abs(whole.lr.astype(int) - tiled.lr.astype(int)).max() <= 1
    data = tiled.to_bytes()
    out_whole = model.decode(Packet.from_bytes(whole.to_bytes()), ref, temperature=0.0)
    out_tiled = model.decode(Packet.from_bytes(data), ref, temperature=0.0)  # uses the recorded layout
    assert (out_whole - out_tiled).abs().max() < 1e-5
    out_retiled = model.decode(Packet.from_bytes(data), ref, temperature=0.0, tile=24, overlap=4)
    assert (out_whole - out_retiled).abs().max() < 1e-5


@pytest.mark.parametrize("length,tile,overlap,align", [(1024, 448, 32, 2), (640, 448, 32, 4), (3456, 448, 32, 4),
                                                       (40, 12, 4, 4), (36, 36, 8, 4), (100, 8, 0, 2)])
def test_tile_grid_partitions_the_axis(length, tile, overlap, align):
    from refscale import tiling

    win, spans = tiling.axis(length, tile, overlap, align)
    cores = [(a, b) for _, a, b in spans]
    assert cores[0][0] == 0 and cores[-1][1] == length and all(b == c for (_, b), (c, _) in zip(cores, cores[1:]))
    sizes = [b - a for a, b in cores]
    assert max(sizes) <= tile and max(sizes) - min(sizes) <= max(sizes) // 2 + align  # balanced, no sliver
    for origin, a, b in spans:
        assert origin % align == 0 and 0 <= origin <= a and b <= origin + win <= length
        assert a - origin >= min(overlap, a) and origin + win - b >= min(overlap, length - b)  # context on both sides


def test_tile_is_rounded_to_the_alignment():
    model = ToyRef()
    hr, ref = pair(40, 40)
    packet = model.encode(hr, ref, tile=10, overlap=3)
    assert packet.tiles == {"tile": 12, "overlap": 4}


def test_large_images_are_tiled_automatically(monkeypatch):
    monkeypatch.setattr(pipeline, "AUTO_TILE_PIXELS", 32 * 32)
    monkeypatch.setattr(pipeline, "DEFAULT_TILE", 16)
    monkeypatch.setattr(pipeline, "BATCH_PIXELS", 3 * 40 * 40)  # several batches
    model = ToyAvg()
    hr = synthetic_image(48, 64)
    packet = model.encode(hr)
    assert packet.tiles == {"tile": 16, "overlap": 16}  # overlap capped at the tile
    assert np.array_equal(packet.lr, model.encode(hr, tile=0).lr)


def test_bad_tile_argument():
    with pytest.raises(InputError, match="tile"):
        ToyAvg().encode(synthetic_image(16, 16), tile=-4)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_pixels_other_seed_other_pixels():
    model = ToyRef()
    hr, ref = pair(24, 24)
    data = model.encode(hr, ref).to_bytes()
    a = model.decode(Packet.from_bytes(data), ref, seed=3)
    b = model.decode(Packet.from_bytes(data), ref, seed=3)
    c = model.decode(Packet.from_bytes(data), ref, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match="seed"):
        model.decode(Packet.from_bytes(data), ref, seed=-1)
    with pytest.raises(InputError, match="temperature"):
        model.decode(Packet.from_bytes(data), ref, temperature=float("nan"))


DECODE_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_pipeline import ToyRef
    from refscale import zoo
    from refscale.container import Packet
    from refscale.imageio import read_image
    from refscale.metrics import to_uint8
    ref = read_image({ref!r})
    out = ToyRef().decode(Packet.from_bytes(open({rsc!r}, "rb").read()), ref, seed=7)
    print(hashlib.sha256(to_uint8(out).numpy().tobytes()).hexdigest())
    if {irn!r}:
        irn = zoo.load({irn!r})
        out = irn.decode(Packet.from_bytes(open({irn_rsc!r}, "rb").read()), seed=7)
        print(hashlib.sha256(to_uint8(out).numpy().tobytes()).hexdigest())
""")


def test_two_processes_decode_identical_pixels(tmp_path):
    """Same container + reference + seed -> identical pixels in two fresh processes (a toy
    reference model, tiled; and a randomly initialised IRN in the default precision)."""
    from refscale.imageio import read_image, write_image

    hr, ref = pair(40, 48)
    write_image(ref, tmp_path / "ref.png")
    ref = read_image(tmp_path / "ref.png")
    model = ToyRef()
    (tmp_path / "x.rsc").write_bytes(model.encode(hr, ref, tile=16, overlap=4).to_bytes())
    expected = [model.decode(Packet.from_bytes((tmp_path / "x.rsc").read_bytes()), ref, seed=7)]
    irn_path = ""
    if "irn-x2" in zoo.architectures():
        torch.manual_seed(0)
        irn = zoo.build("irn-x2", blocks=[2])
        with torch.no_grad():
            for p in irn.parameters():
                p.add_(torch.randn(p.shape) * 0.01)
        irn_path = str(tmp_path / "irn.safetensors")
        zoo.save_weights(irn, irn_path)
        irn = zoo.load(irn_path)
        (tmp_path / "irn.rsc").write_bytes(irn.encode(hr).to_bytes())
        expected.append(irn.decode(Packet.from_bytes((tmp_path / "irn.rsc").read_bytes()), seed=7))
    script = DECODE_SCRIPT.format(tests=str(TESTS), rsc=str(tmp_path / "x.rsc"), ref=str(tmp_path / "ref.png"),
                                  irn=irn_path, irn_rsc=str(tmp_path / "irn.rsc"))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120).stdout.split()
            for _ in range(2)]
    here = [hashlib.sha256(to_uint8(x).numpy().tobytes()).hexdigest() for x in expected]
    assert runs[0] == runs[1] == here


# ----------------------------------------------------------------------------- precision
def test_precision_is_recorded_and_repeated_by_the_decoder(monkeypatch):
    from refscale.nn.speed import FastInference, native_bf16

    class Speedy(FastInference, ToyAvg):
        seen: list = []

        def downscale(self, hr, ref=None):
            self.seen.append(("down", self.bf16))
            return super().downscale(hr, ref)

        def upscale(self, lr, side=None, ref=None, **kw):
            self.seen.append(("up", self.bf16))
            return super().upscale(lr, side, ref, **kw)

    model = Speedy()
    hr = synthetic_image(16, 16)
    assert pipeline.DEFAULT_PRECISION == "auto"  # bf16 only where the CPU runs it natively
    for native in (True, False):
        monkeypatch.setattr(pipeline, "native_bf16", lambda device="cpu", native=native: native)
        assert model.encode(hr).precision == ("bf16" if native else "fp32")
    monkeypatch.undo()
    packet = model.encode(hr)
    assert packet.precision == ("bf16" if native_bf16() else "fp32")
    assert model.encode(hr, precision="bf16").precision == "bf16"
    assert Packet.from_bytes(packet.to_bytes()).precision == packet.precision
    model.seen.clear()
    model.decode(packet)
    assert [e for e in model.seen if e[0] == "up"] == [("up", packet.precision == "bf16")]
    assert model.seen == [("up", packet.precision == "bf16")]  # no probe: the side tensors are declared
    model.seen.clear()
    fp32 = model.encode(hr, precision="fp32")
    model.decode(fp32)
    assert fp32.precision == "fp32" and set(model.seen) == {("down", False), ("up", False)}
    assert model.bf16 is False  # the model's own setting is restored
    assert ToyAvg().encode(hr, precision="bf16").precision == "fp32"  # models without supports_bf16 run fp32
    with pytest.raises(InputError, match="precision"):
        model.encode(hr, precision="fp8")


# ----------------------------------------------------------------------------- a real model, when present
def test_bicubic_round_trip_if_available():
    try:
        model = zoo.load("bicubic-x2")
    except ModelError:
        pytest.skip("bicubic not registered")
    hr = synthetic_image(33, 47)
    out = model.decode(Packet.from_bytes(model.encode(hr).to_bytes()))
    assert out.shape == hr.shape and float(psnr(out, hr, crop_border=2)) > 25


def test_reference_fingerprint_is_of_the_reference_as_given():
    """encode records the fingerprint of the reference it was given (before resampling and
    registration); decoding with the same file passes, a one-level change anywhere is refused."""
    from refscale.container import reference_fingerprint

    model = ToyRef()
    hr, ref = pair(24, 32)
    small = ref[..., :20, :28]
    packet = model.encode(hr, small, resample_ref=True)
    assert packet.ref_hash == pipeline.fingerprint(small)
    model.decode(packet, small)  # the same reference: no error
    changed = ref.clone()
    changed[0, 1, 5, 7] = (torch.round(changed[0, 1, 5, 7] * 255) + (1 if changed[0, 1, 5, 7] < 0.5 else -1)) / 255
    full = model.encode(hr, ref)
    with pytest.raises(InputError, match="not the one"):
        model.decode(full, changed)
    assert len(reference_fingerprint(np.zeros((2, 3, 3), np.uint8))) == 64


def test_decoder_warns_when_the_reference_looks_unrelated():
    """The plausibility check is independent of the fingerprint: with --allow-other-reference and
    another place's image, the decoder also says the reference looks unrelated; the true one is quiet."""
    import warnings

    model = ToyRef()
    hr = synthetic_image(48, 48, seed=1)
    ref = (hr * 0.9 + 0.05).clamp(0, 1)
    packet = model.encode(hr, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.decode(packet, ref)
    other = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(5))  # another place
    with pytest.warns(UserWarning) as record:
        model.decode(packet, other, allow_other_reference=True)
    texts = " | ".join(str(w.message) for w in record)
    assert "not the one" in texts and "looks unrelated" in texts
    # a flat reference cannot be checked: said as such, not as an agreement of "nan"
    with pytest.warns(UserWarning) as record:
        model.decode(packet, torch.full_like(hr, 0.5), allow_other_reference=True)
    texts = " | ".join(str(w.message) for w in record)
    assert "no detail to compare" in texts and "nan" not in texts


def _record_references(model, monkeypatch) -> dict:
    """The reference tensors ``model`` is given, by ``"encode"`` (downscale) and ``"decode"`` (upscale)."""
    seen = {"encode": [], "decode": []}
    down, up = model.downscale, model.upscale
    monkeypatch.setattr(model, "downscale", lambda x, r=None: (seen["encode"].append(r.clone()), down(x, r))[1])
    monkeypatch.setattr(model, "upscale", lambda lr, side=None, r=None, **kw: (seen["decode"].append(r.clone()), up(lr, side, r, **kw))[1])
    return seen


def _moved(img: torch.Tensor, shift) -> torch.Tensor:
    """``img`` translated by ``shift`` pixels (cubic spline), independently of refscale.registration."""
    from scipy.ndimage import shift as nd_shift

    a = img.double()[0].numpy()
    return torch.from_numpy(np.stack([nd_shift(c, shift, order=3, mode="mirror") for c in a])).float()[None].clamp(0, 1)


@pytest.mark.parametrize("shift", [(3.4, -5.7), (-12.25, 7.5), (0.6, 0.3)])
def test_registration_recovers_a_known_shift(shift, monkeypatch):
    """Within 0.25 px, on a synthetic image and on a real Sentinel-2 tile (the shipped demo pair:
    the 2015 image moved against the 2017 one), also on the central window of large images."""
    from refscale import registration
    from refscale.demo import real_pair
    from refscale.imageio import as_image_tensor

    img = synthetic_image(128, 160, seed=2)
    est = registration.estimate_shift(img, _moved(img, shift))
    assert np.abs(np.add(est, shift)).max() <= 0.25, est
    new, old = (as_image_tensor(a) for a in real_pair())
    est = registration.estimate_shift(new, _moved(old, shift))
    assert np.abs(np.add(est, shift)).max() <= 0.25, est
    monkeypatch.setattr(registration, "MAX_SIDE", 160)  # 384 px -> its central 160 px window
    est = registration.estimate_shift(new, _moved(old, shift))
    assert np.abs(np.add(est, shift)).max() <= 0.25, est
    assert registration.is_none(registration.estimate_shift(new, old))  # the pair as shipped is registered


def test_a_reference_of_another_size_is_resampled_then_registered(monkeypatch):
    """A reference at another resolution whose footprint is offset by a translation (5, -7 px):
    the encoder resamples it, registers it and records the shift; the decoder, given the same
    file and no option, resamples and warps it identically: bit-identical reference pixels for
    the model at both ends (hence the same F_c)."""
    from refscale.demo import real_pair
    from refscale.imageio import as_image_tensor

    new, old = (as_image_tensor(a) for a in real_pair())
    hr = new[..., 16:112, 16:144]
    footprint = old[..., 16 + 5:112 + 5, 16 - 7:144 - 7]  # the archive image covers an offset area
    ref = torch.round(ops.imresize(footprint.double(), scale=1.5).clamp(0, 1) * 255).float() / 255
    assert ref.shape[-2:] == (144, 192)
    model = ToyRef()
    seen = _record_references(model, monkeypatch)
    packet = Packet.from_bytes(model.encode(hr, ref, tile=0, resample_ref=True, verify=False).to_bytes())
    encoded = seen["encode"][-1]
    assert encoded.shape[-2:] == hr.shape[-2:]
    assert np.abs(np.subtract(packet.ref_shift, (500, -700))).max() <= 25  # within 0.25 px
    assert packet.ref_hash == pipeline.fingerprint(ref)  # of the file as given
    model.decode(packet, ref, tile=0)
    assert torch.equal(encoded, seen["decode"][-1])
    assert torch.equal(encoded, torch.round(encoded * 255) / 255)  # 8-bit pixels, nothing machine-dependent left


@pytest.mark.parametrize("degrees, shift", [(3.0, (0.0, 0.0)), (-5.0, (4.0, -7.0)), (1.0, (0.0, 0.0))])
def test_registration_recovers_a_known_rotation(degrees, shift, monkeypatch):
    """The demo pair's 2015 image turned by a known angle (scipy.ndimage.rotate) and moved:
    encode records the inverse turn to within 0.15 degree and a shift that lines the reference
    up (its detail agrees with the new image as well as the untouched pair's does); decode
    applies the identical warp (bit-identical reference pixels for the model at both ends)."""
    from scipy.ndimage import rotate

    from refscale import registration
    from refscale.demo import real_pair
    from refscale.imageio import as_image_tensor

    new, old = (as_image_tensor(a) for a in real_pair())
    turned = torch.from_numpy(np.stack([rotate(c, degrees, reshape=False, order=3, mode="mirror")
                                        for c in old.double()[0].numpy()])).float()[None].clamp(0, 1)
    ref = torch.round(_moved(turned, shift) * 255) / 255
    model = ToyRef()
    seen = _record_references(model, monkeypatch)
    packet = Packet.from_bytes(model.encode(new, ref, tile=0, verify=False).to_bytes())
    assert packet.version == 4 and abs(registration.rotation_from_units(packet.ref_rotation) + degrees) <= 0.15
    encoded = seen["encode"][-1]

    def agreement(x):  # the detail band, away from the border the warps filled
        a, b = (registration._band(registration._luma(t))[40:-40, 40:-40] for t in (new, x))
        return registration._correlation(a, b)

    assert agreement(encoded) >= agreement(old) - 0.03 and agreement(ref) < agreement(old) - 0.2
    model.decode(packet, ref, tile=0)
    assert torch.equal(encoded, seen["decode"][-1])


@pytest.mark.parametrize("degrees", [5, 10])
def test_a_rotated_reference_gets_no_spurious_shift(degrees):
    """Phase correlation finds a peak on any pair; on a rotated reference it is meaningless (up to
    278 px on the OSCD test cities), and registration must record no shift rather than that one."""
    from scipy.ndimage import rotate

    from refscale import registration
    from refscale.demo import real_pair
    from refscale.imageio import as_image_tensor

    new, old = (as_image_tensor(a) for a in real_pair())
    a = old.double()[0].numpy()
    rotated = torch.from_numpy(np.stack([rotate(c, degrees, reshape=False, order=3, mode="mirror") for c in a]))
    with pytest.warns(UserWarning, match="no shift applied"):
        assert registration.estimate_shift(new, rotated.float()[None].clamp(0, 1)) == (0.0, 0.0)


def test_encoder_and_decoder_see_the_same_registered_reference(monkeypatch):
    """encode estimates and records the shift; decode moves its copy of the reference by it: the
    model gets bit-identical reference pixels at both ends (hence the same F_c)."""
    from refscale.demo import real_pair
    from refscale.imageio import as_image_tensor

    new, old = (as_image_tensor(a)[..., :96, :128] for a in real_pair())
    ref = _moved(old, (4.0, -6.5))
    model = ToyRef()
    seen = _record_references(model, monkeypatch)
    packet = Packet.from_bytes(model.encode(new, ref, tile=0, verify=False).to_bytes())
    encoded = seen["encode"][-1]  # (the decoder may probe the model with other inputs later)
    assert packet.ref_shift != (0, 0) and np.abs(np.add(packet.ref_shift, (400, -650))).max() <= 25
    model.decode(packet, ref, tile=0)
    assert torch.equal(encoded, seen["decode"][-1])
    assert not torch.equal(encoded, ref)  # it was moved
    plain = model.encode(new, ref, register=False)
    assert plain.ref_shift == (0, 0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 7), (8, 40), (31, 64)])
def test_images_too_small_to_register_are_encoded_unregistered(size):
    """Issue 26, item 5.1: an image under registration.MIN_SIDE px on a side (under 4 px the
    rotation estimate had nothing to resample: a traceback) is not registered: a warning, no
    recorded transform, and a tiny RefScale encodes and decodes it at its own size."""
    from refscale import registration

    model = zoo.build("refscale-x2", blocks=[1], nf=8, n_rrdb=1, ref_gc=4, gc=8).eval()
    hr = synthetic_image(*size, seed=1)
    ref = (hr * 0.9 + 0.05).clamp(0, 1)
    with pytest.warns(UserWarning, match=f"under {registration.MIN_SIDE} px on a side"):
        packet = Packet.from_bytes(model.encode(hr, ref).to_bytes())
    assert packet.ref_shift == (0, 0) and packet.ref_rotation == 0
    assert model.decode(packet, ref).shape == (1, 3, *size)
    assert registration.estimate_rotation(np.zeros(size), np.zeros(size)) == 0.0
    with pytest.warns(UserWarning, match="too small"):
        assert registration.estimate_shift(hr, ref) == (0.0, 0.0)
