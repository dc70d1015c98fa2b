"""Fuzzing the .rsc reader and decoder: 8,000 damaged containers (format versions 2, 3 and 4;
raster record versions 1 and 2, i.e. without and with a nodata mask).

Random truncations, bit flips, header edits (with the header CRC repaired, so the checks behind
it are exercised) and section edits (with the section CRCs repaired, so the image and
side-stream decoders see the damage) of valid containers. Each must either decode to a valid
image (finite, in [0,1], of the size the header states) or raise RefScaleError; any other
exception, or more than 5 s on one case, fails the test.
"""
from __future__ import annotations

import signal
import struct
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from refscale import codecs
from refscale.container import Packet, read_header
from refscale.errors import RefScaleError
from refscale.raster import Mask, RasterRecord, from_model, restore_nodata
from test_pipeline import ToyRef, pair

CASES_PER_BASE = 2000  # four base containers -> 8,000 cases (about 3 s)


class Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise Hang()


def bases():
    model = ToyRef()
    hr, ref = pair(32, 32)
    plain = model.encode(hr, ref, verify=False).to_bytes()
    codec = "webp" if codecs.available_codecs()["webp"] else "png"
    tiled = model.encode(hr, ref, tile=8, overlap=4, verify=False).to_bytes(codec=codec)
    geo = model.encode(hr, ref, verify=False)  # format version 3: with a raster record (GeoTIFF, 16-bit, bands)
    geo = replace(geo, raster=RasterRecord(dtype="uint16", band_count=4, bands=[4, 3, 2], ranges=[(100.0, 3000.0)] * 3,
                              descriptions=["B08", "B04", None], rule="p0.1,99.9", nodata=0.0,
                              crs='PROJCS["WGS 84 / UTM zone 31N"]', transform=(10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0)))
    masked = model.encode(hr, ref, verify=False)  # raster record version 2: with a nodata mask after the JSON
    invalid = np.zeros((3, 32, 32), bool)
    invalid[:, :3] = True
    invalid[2, 10:12, 4:9] = True
    masked = replace(masked, raster=RasterRecord(dtype="float32", band_count=3, bands=[1, 2, 3], ranges=[(0.0, 1.0)] * 3,
                                 nodata=float("nan"), mask=Mask.from_bool(invalid)))
    turned = model.encode(hr, ref, verify=False)  # format version 4: a reference rotation (registration)
    turned = replace(turned, ref_rotation=-250)
    assert Packet.from_bytes(turned.to_bytes()).version == 4
    checked = model.encode(hr, ref, tile=16, overlap=4)  # format version 5: the verifying encoder's record
    checked.verification.fallback[0, 0] = True
    assert Packet.from_bytes(checked.to_bytes()).version == 5
    return model, ref, [plain, tiled, geo.to_bytes(), masked.to_bytes(), turned.to_bytes(), checked.to_bytes()]


def fix_header_crc(data: bytes) -> bytes:
    n = struct.unpack_from("<I", data, 10)[0]
    if 14 + n + 4 > len(data):
        return data
    return data[:14 + n] + struct.pack("<I", zlib.crc32(data[:14 + n])) + data[14 + n + 4:]


def section_edit(data: bytes, rng) -> bytes:
    """Damage bytes inside one section and repair that section's CRC in the header."""
    h = read_header(data)
    spans = [(h.header_bytes, h.lr_length, struct.pack("<II", h.lr_length, h.lr_crc))]
    pos = h.header_bytes + h.lr_length
    for e in h.side:
        spans.append((pos, e.length, struct.pack("<II", e.length, e.crc)))
        pos += e.length
    if h.raster_length:
        spans.append((pos, h.raster_length, struct.pack("<II", h.raster_length, h.raster_crc)))
        pos += h.raster_length
    if h.verify_length:
        spans.append((pos, h.verify_length, struct.pack("<II", h.verify_length, h.verify_crc)))
    start, length, entry = spans[rng.integers(len(spans))]
    out = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        out[start + rng.integers(length)] = rng.integers(256)
    n = struct.unpack_from("<I", data, 10)[0]
    i = bytes(out[14:14 + n]).find(entry)
    struct.pack_into("<I", out, 14 + i + 4, zlib.crc32(bytes(out[start:start + length])))
    return fix_header_crc(bytes(out))


def header_edit(data: bytes, rng) -> bytes:
    """Overwrite 1-3 header-body bytes (or a whole u32 with an 'interesting' value), fix the CRC."""
    n = struct.unpack_from("<I", data, 10)[0]
    out = bytearray(data)
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            out[14 + rng.integers(n)] = rng.integers(256)
    else:
        value = int(rng.choice([0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 33, 255, 256, 65535, 2**31, 2**32 - 1]))
        o = 14 + rng.integers(n - 3)
        struct.pack_into("<I", out, o, value)
    if rng.random() < 0.1:  # also lie about the header length
        struct.pack_into("<I", out, 10, int(rng.integers(0, n + 8)))
    return fix_header_crc(bytes(out))


def mutate(data: bytes, rng) -> bytes:
    kind = rng.integers(4)
    if kind == 0:  # truncation
        return data[: rng.integers(len(data))]
    if kind == 1:  # bit flips anywhere
        out = bytearray(data)
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(out))
            out[i] ^= 1 << rng.integers(8)
        return bytes(out)
    if kind == 2:
        return header_edit(data, rng)
    return section_edit(data, rng)


def test_fuzz_container_and_decoder():
    model, ref, base_files = bases()
    for data in base_files:  # the bases themselves decode
        assert model.decode(Packet.from_bytes(data), ref).shape == (1, 3, 32, 32)
    rng = np.random.default_rng(20240601)
    outcomes = {"decoded": 0, "refused": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    slowest = 0.0
    try:
        for base in base_files:
            for case in range(CASES_PER_BASE):
                bad = mutate(base, rng)
                start = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, 5.0)
                try:
                    packet = Packet.from_bytes(bad)
                    out = model.decode(packet, ref, seed=case)
                    if packet.raster is not None:  # the decoded image maps back through the record
                        back = from_model(out, packet.raster)
                        assert back.shape == (len(packet.raster.bands), *packet.size)
                        if packet.raster.mask is not None:
                            restore_nodata(back, packet.raster.mask.rows(), packet.raster)
                except RefScaleError as e:
                    assert "\n" not in str(e)
                    outcomes["refused"] += 1
                except Hang:
                    pytest.fail(f"case {case} took more than 5 s")
                except Exception as e:  # noqa: BLE001
                    pytest.fail(f"case {case}: {type(e).__name__} leaked: {e}")
                else:
                    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *packet.size)
                    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
                    outcomes["decoded"] += 1
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                slowest = max(slowest, time.perf_counter() - start)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert sum(outcomes.values()) >= 8000
    # both outcomes occur: damage inside pixel data with repaired CRCs still decodes
    assert outcomes["decoded"] > 20 and outcomes["refused"] > 1000, outcomes
    assert slowest < 5.0
