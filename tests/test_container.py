"""The .rsc container: round trips, docs/format.md conformance, and every validation rule."""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest

from refscale import codecs
from refscale.container import MAGIC, Packet, inspect, read_header, section_sizes
from refscale.errors import ContainerError, InputError, RefScaleError

HASH = "0123456789abcdef" * 4


def make_packet(h=15, w=19, scale=2, side=True, tiles=None, seed=0) -> Packet:
    rng = np.random.default_rng(seed)
    ph, pw = -(-h // scale) * scale, -(-w // scale) * scale
    yy, xx = np.mgrid[0:ph // scale, 0:pw // scale]
    lr = np.stack([(yy * 9 + xx * 5) % 256, (xx * 13) % 256, (yy * 3 + rng.integers(0, 20, yy.shape)) % 256], -1).astype(np.uint8)
    sides = {"smap": rng.integers(0, 8, (1, 1, ph // scale, pw // scale))} if side else {}
    return Packet("toy-x2", HASH, scale, (h, w), (ph, pw), tiles, lr, sides, side_dtypes={"smap": "float32"} if side else {})


# ----------------------------------------------------------------------------- an independent reader, from docs/format.md
def spec_read(data: bytes) -> dict:
    """Parse a container following docs/format.md only (no refscale code)."""
    assert data[:8] == bytes([0x89, 0x52, 0x53, 0x43, 0x0D, 0x0A, 0x1A, 0x0A])
    version, n = struct.unpack_from("<HI", data, 8)
    assert version in (1, 2, 3, 4, 5)
    assert struct.unpack_from("<I", data, 14 + n)[0] == zlib.crc32(data[:14 + n])
    pos = 14

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    def str8():
        nonlocal pos
        k = data[pos]
        s = data[pos + 1:pos + 1 + k].decode("ascii")
        pos += 1 + k
        return s

    out = {"model": str8(), "hash": data[pos:pos + 32].hex(), "ref": None, "version": version}
    pos += 32
    if version >= 2:
        (flag,) = take("<B")
        assert flag in (0, 1)
        if flag:
            out["ref"] = data[pos:pos + 32].hex()
            pos += 32
            out["ref_shift"] = take("<ii")
            out["ref_rotation"] = take("<i")[0] if version >= 4 else 0
    out["scale"], h, w, ph, pw, out["tile"], out["overlap"] = take("<HIIIIII")
    out["size"], out["padded"] = (h, w), (ph, pw)
    out["precision"], out["codec"] = str8(), str8()
    out["quality"], lr_len, lr_crc, n_side = take("<BIIB")
    side = []
    for _ in range(n_side):
        name, dtype, restore = str8(), str8(), str8()
        (ndim,) = take("<B")
        shape = take(f"<{ndim}I")
        comp = str8()
        length, crc = take("<II")
        side.append((name, dtype, restore, shape, comp, length, crc))
    raster_len, raster_crc = take("<II") if version >= 3 else (0, 0)
    verify_len, verify_crc = take("<II") if version >= 5 else (0, 0)
    assert pos == 14 + n
    pos += 4
    out["lr_bytes"] = data[pos:pos + lr_len]
    assert zlib.crc32(out["lr_bytes"]) == lr_crc
    pos += lr_len
    out["side"] = {}
    for name, dtype, restore, shape, comp, length, crc in side:
        blob = data[pos:pos + length]
        assert zlib.crc32(blob) == crc
        if comp == "zlib":
            raw = zlib.decompress(blob)
        else:
            import lzma

            raw = lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 2**24}])
        out["side"][name] = (np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape), restore)
        pos += length
    out["raster"] = None
    if raster_len:
        blob = data[pos:pos + raster_len]
        assert zlib.crc32(blob) == raster_crc
        import json

        d = zlib.decompressobj()
        out["raster"] = json.loads(d.decompress(blob).decode("utf-8"))
        if out["raster"]["v"] == 2:  # a nodata mask follows: packed bit rows, zlib
            m = out["raster"]["mask"]
            assert len(d.unused_data) == m["length"]
            bits = np.frombuffer(zlib.decompress(d.unused_data), np.uint8).reshape(m["planes"], m["height"], -(-m["width"] // 8))
            out["mask"] = np.unpackbits(bits, axis=-1, count=m["width"]).astype(bool)
        else:
            assert not d.unused_data
        pos += raster_len
    out["verification"] = None
    if verify_len:
        blob = data[pos:pos + verify_len]
        assert zlib.crc32(blob) == verify_crc
        block, seed, t, rows, cols = struct.unpack_from("<HIIII", blob)
        bits = np.frombuffer(zlib.decompress(blob[18:]), np.uint8)
        fallback = np.unpackbits(bits, count=rows * cols, bitorder="little").astype(bool).reshape(rows, cols)
        out["verification"] = {"block": block, "seed": seed, "temperature": t / 1000, "fallback": fallback}
        pos += verify_len
    assert pos == len(data)
    return out


def test_file_matches_docs_format_md():
    p = make_packet(tiles={"tile": 8, "overlap": 4})
    p = replace(p, ref_hash="ab" * 32, ref_shift=(-150, 7))
    data = p.to_bytes()
    spec = spec_read(data)
    assert spec["version"] == 2 and spec["ref"] == "ab" * 32 and spec["ref_shift"] == (-150, 7)
    assert spec["model"] == "toy-x2" and spec["hash"] == HASH and spec["scale"] == 2
    assert spec["size"] == (15, 19) and spec["padded"] == (16, 20) and (spec["tile"], spec["overlap"]) == (8, 4)
    assert spec["codec"] == "png" and spec["quality"] == 0 and spec["precision"] == "fp32"
    assert spec["lr_bytes"][:8] == b"\x89PNG\r\n\x1a\n"  # a plain PNG file inside
    smap, restore = spec["side"]["smap"]
    assert np.array_equal(smap, p.side["smap"]) and restore == "float32"


def test_reference_rotation_is_version_4_as_docs_format_md():
    """A rotation makes the file version 4 (the field after the shift); without one it stays
    version 2, byte for byte; out of range, in an older version or without a reference: refused."""
    p = make_packet()
    p = replace(p, ref_hash="ab" * 32, ref_shift=(-150, 7))
    before = p.to_bytes()
    p = replace(p, ref_rotation=-321)
    data = p.to_bytes()
    spec = spec_read(data)
    assert spec["version"] == 4 and spec["ref_shift"] == (-150, 7) and spec["ref_rotation"] == -321
    back = Packet.from_bytes(data)
    assert back.version == 4 and back.ref_rotation == -321 and back.info()["reference_rotation"] == -321
    p = replace(p, ref_rotation=0)
    assert p.to_bytes() == before and Packet.from_bytes(before).ref_rotation == 0
    p = replace(p, ref_rotation=18001)
    with pytest.raises(ContainerError, match="rotation .* out of range"):
        p.to_bytes()
    header = read_header(data)
    header.version = 3
    with pytest.raises(ContainerError, match="version 3 has no reference rotation"):
        header.validate()
    q = make_packet()
    q = replace(q, ref_rotation=5)
    with pytest.raises(ContainerError, match="without a reference"):
        q.to_bytes()
    for cut in (14 + 7 + 32 + 1 + 32 + 8 + 2, len(data) - 1):  # inside the rotation field; the last byte
        with pytest.raises(ContainerError):
            Packet.from_bytes(data[:cut])


def test_a_rotation_alone_counts_as_registered():
    """Decoding window by window cannot move the reference: a recorded turn without a shift must
    send it to the in-memory path as a shift does (files.decode_to_file, pipeline.decode)."""
    p = make_packet()
    assert not p.registered
    p = replace(p, ref_hash="ab" * 32, ref_rotation=250)
    assert p.registered and Packet.from_bytes(p.to_bytes()).registered
    p = replace(p, ref_rotation=0, ref_shift=(0, -3))
    assert p.registered


def test_format_md_exists_and_names_every_field():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    for word in ("magic", "version", "weights hash", "reference fingerprint", "reference shift", "padded", "tile", "overlap", "codec", "quality", "CRC32",
                 "zlib", "lzma", "bpp", "precision", "restore dtype"):
        assert word in text, word


# ----------------------------------------------------------------------------- round trips
def test_round_trip_exact_with_side_info_and_tiles():
    p = make_packet(tiles={"tile": 8, "overlap": 2})
    q = Packet.from_bytes(p.to_bytes())
    assert np.array_equal(q.lr, p.lr) and np.array_equal(q.side["smap"], p.side["smap"])
    assert (q.model, q.weights_hash, q.scale, q.size, q.padded_size) == (p.model, p.weights_hash, 2, (15, 19), (16, 20))
    assert q.tiles == {"tile": 8, "overlap": 2} and q.side_dtypes == {"smap": "float32"} and q.codec == "png"


@pytest.mark.parametrize("codec", [c for c, ok in codecs.available_codecs().items() if ok and not codecs.needs_reference(c)])
def test_round_trip_every_available_codec(codec):  # the inter-frame codecs: tests/test_inter.py
    p = make_packet(h=32, w=40)
    data = p.to_bytes(codec=codec)
    q = Packet.from_bytes(data)
    assert q.codec == codec and q.lr.shape == p.lr.shape and q.lr.dtype == np.uint8
    if codecs.is_lossless(codec, None):
        assert np.array_equal(q.lr, p.lr)
    if codec != "png":
        lossy = Packet.from_bytes(p.to_bytes(codec=codec, quality=60))
        assert lossy.quality == 60
        err = np.abs(lossy.lr.astype(int) - p.lr.astype(int)).mean()
        assert err < 40  # still the same picture
    # issue 26, item 5.6: no quality given records the one used (JPEG's default), not "codec default"
    assert q.quality == codecs.effective_quality(codec, None) and q.info()["quality"] == q.quality
    if codec == "jpeg":
        assert q.quality == codecs.JPEG_DEFAULT_QUALITY and data == p.to_bytes(codec, codecs.JPEG_DEFAULT_QUALITY)


def test_side_tensors_use_small_dtypes_and_both_compressors():
    rng = np.random.default_rng(1)
    p = make_packet(side=False, h=64, w=64)
    p = replace(p, side={
        "small": rng.integers(0, 4, (1, 1, 32, 32)),  # -> uint8
        "signed": rng.integers(-300, 300, (1, 2, 16, 16)),  # -> int16
        "flat": np.zeros((1, 1, 64, 64), np.int64),
        "noise": rng.integers(0, 256, (1, 1, 8, 8)),  # incompressible, tiny: zlib's smaller header wins
    })
    data = p.to_bytes()
    info = inspect(data)
    assert info["side"]["small"]["dtype"] == "uint8" and info["side"]["signed"]["dtype"] == "int16"
    assert {v["compression"] for v in info["side"].values()} == {"zlib", "lzma"}
    q = Packet.from_bytes(data)
    for k, v in p.side.items():
        assert np.array_equal(q.side[k], v)


def test_section_sizes_and_bpp():
    p = make_packet()
    data = p.to_bytes()
    s = section_sizes(data)
    assert s["total"] == len(data) == s["header"] + s["lr"] + s["side"]
    assert s["side"] == s["side:smap"] > 0
    info = p.info(data)
    assert info["bpp"] == pytest.approx(len(data) * 8 / (15 * 19))
    assert info["bpp_lr"] == pytest.approx(s["lr"] * 8 / (15 * 19))
    assert inspect(data)["bytes"] == len(data)


def test_to_bytes_defaults_to_the_packets_codec():
    p = make_packet()
    p = replace(p, codec="webp", quality=80)
    q = Packet.from_bytes(p.to_bytes())
    assert (q.codec, q.quality) == ("webp", 80)


# ----------------------------------------------------------------------------- writer refusals
def test_writer_refuses_inconsistent_packets():
    p = make_packet()
    p = replace(p, lr=p.lr[:-1])
    with pytest.raises(ContainerError, match="LR must be"):
        p.to_bytes()
    p = make_packet()
    p = replace(p, side={**p.side, "smap": p.side["smap"].astype(np.float32)})
    with pytest.raises(ContainerError, match="integer"):
        p.to_bytes()
    p = make_packet()
    p = replace(p, side={**p.side, "smap": np.zeros((1, 1, 3, 7), np.uint8)})
    with pytest.raises(ContainerError, match="stride"):
        p.to_bytes()
    p = make_packet()
    p = replace(p, model="has space")
    with pytest.raises(ContainerError, match="printable"):
        p.to_bytes()
    with pytest.raises(InputError, match="lossless"):
        make_packet().to_bytes(codec="png", quality=90)
    with pytest.raises(InputError, match="unknown codec"):
        make_packet().to_bytes(codec="gif")


# ----------------------------------------------------------------------------- reader refusals
def rewrite_header(data: bytes, edit) -> bytes:
    """Apply ``edit(bytearray body)`` to the header body and fix the header CRC (a valid-looking file)."""
    n = struct.unpack_from("<I", data, 10)[0]
    body = bytearray(data[14:14 + n])
    edit(body)
    head = data[:10] + struct.pack("<I", len(body)) + bytes(body)
    return head + struct.pack("<I", zlib.crc32(head)) + data[14 + n + 4:]


def offsets(data):
    """Body offsets of the fixed fields for a packet from make_packet (model 'toy-x2')."""
    base = 1 + 6 + 32 + 1  # str8 model + hash + reference flag (0: no fingerprint)
    return {"scale": base, "h": base + 2, "w": base + 6, "ph": base + 10, "pw": base + 14, "tile": base + 18,
            "overlap": base + 22, "precision": base + 26}


@pytest.mark.parametrize("field,value,match", [
    ("scale", 0, "scale"),
    ("h", 0, "out of range"),
    ("ph", 14, "smaller than the image"),
    ("ph", 2000, "implausibly large|LR image|side tensor"),
    ("pw", 21, "multiple of the scale"),
    ("ph", 1 << 19, "out of range"),
    ("tile", 7, "tile layout"),
    ("overlap", 2, "overlap but no tile"),
])
def test_reader_refuses_bad_fields_even_with_a_valid_crc(field, value, match):
    data = make_packet().to_bytes()
    o = offsets(data)[field]
    fmt = "<H" if field == "scale" else "<I"
    fixed = rewrite_header(data, lambda b: struct.pack_into(fmt, b, o, value))
    with pytest.raises(ContainerError, match=match):
        Packet.from_bytes(fixed)


def test_reader_refuses_unknown_names():
    data = make_packet().to_bytes()
    o = offsets(data)["precision"]
    with pytest.raises(ContainerError, match="precision"):
        Packet.from_bytes(rewrite_header(data, lambda b: b.__setitem__(slice(o + 1, o + 5), b"fp64")))
    with pytest.raises(ContainerError, match="codec"):
        Packet.from_bytes(rewrite_header(data, lambda b: b.__setitem__(slice(o + 6, o + 9), b"gif")))
    with pytest.raises(ContainerError, match="ASCII"):
        Packet.from_bytes(rewrite_header(data, lambda b: b.__setitem__(1, 0xC3)))


def test_reader_refuses_wrong_magic_version_truncation_and_crcs():
    data = make_packet().to_bytes()
    cases = {
        "bad magic": b"GIF89a" + data[6:],
        "PNG image": b"\x89PNG\r\n\x1a\n" + data[8:],
        "version 6": data[:8] + b"\x06\x00" + data[10:],
        "truncated": data[:-3],
        "trailing": data + b"\0",
        "header checksum": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "section checksum": data[:-2] + bytes([data[-2] ^ 0x10]) + data[-1:],
        "empty": b"",
    }
    for label, bad in cases.items():
        with pytest.raises(ContainerError) as err:
            Packet.from_bytes(bad)
        assert "\n" not in str(err.value), label
    with pytest.raises(ContainerError, match="version 6"):
        Packet.from_bytes(cases["version 6"])
    with pytest.raises(ContainerError, match="PNG"):
        Packet.from_bytes(cases["PNG image"])


@pytest.mark.parametrize("target,match", [("lr", "png LR bitstream is corrupt"), ("side", "smap")])
def test_corrupt_bitstream_or_side_stream_with_valid_crcs(target, match):
    data = bytearray(make_packet().to_bytes())
    h = read_header(bytes(data))
    lr0, side0 = h.header_bytes, h.header_bytes + h.lr_length
    if target == "lr":
        data[lr0 + 40:lr0 + 44] = b"\xff\xff\xff\xff"
    else:
        data[side0:side0 + 2] = b"\x00\x01"

    def fix_crcs(body):  # make the damaged sections pass their checksums
        i = body.find(struct.pack("<II", h.lr_length, h.lr_crc))
        struct.pack_into("<I", body, i + 4, zlib.crc32(bytes(data[lr0:lr0 + h.lr_length])))
        e = h.side[0]
        j = body.find(struct.pack("<II", e.length, e.crc))
        struct.pack_into("<I", body, j + 4, zlib.crc32(bytes(data[side0:side0 + e.length])))

    bad = rewrite_header(bytes(data), fix_crcs)
    read_header(bad)  # structurally valid
    with pytest.raises(ContainerError, match=match) as err:
        Packet.from_bytes(bad)
    assert "object at 0x" not in str(err.value)


def test_errors_are_refscale_errors_with_one_line():
    assert issubclass(ContainerError, RefScaleError)
    with pytest.raises(ContainerError, match="bytes of a .rsc"):
        Packet.from_bytes("not bytes")
    assert MAGIC == b"\x89RSC\r\n\x1a\n"


def as_version_1(data: bytes) -> bytes:
    """The same container as format version 1 wrote it (docs/format.md: no reference field)."""
    n = struct.unpack_from("<I", data, 10)[0]
    body = bytearray(data[14:14 + n])
    k = body[0] + 1 + 32  # model str8, weights hash
    drop = 1 + (32 + 8 if body[k] else 0)  # flag, fingerprint, shift
    del body[k:k + drop]
    head = data[:8] + struct.pack("<HI", 1, len(body)) + bytes(body)
    return head + struct.pack("<I", zlib.crc32(head)) + data[18 + n:]


def test_reference_fingerprint_field_and_version_1_files():
    p = make_packet()
    p = replace(p, ref_hash="cd" * 32)
    q = Packet.from_bytes(p.to_bytes())
    assert q.ref_hash == "cd" * 32 and q.version == 2 and q.info()["reference_fingerprint"] == "cd" * 32
    none = Packet.from_bytes(make_packet().to_bytes())
    assert none.ref_hash is None
    old = Packet.from_bytes(as_version_1(p.to_bytes()))  # a file written before fingerprints existed
    assert old.version == 1 and old.ref_hash is None and np.array_equal(old.lr, p.lr)
    assert spec_read(as_version_1(p.to_bytes()))["ref"] is None
    data = bytearray(p.to_bytes())
    k = 14 + data[14] + 1 + 32
    with pytest.raises(ContainerError, match="reference flag"):
        Packet.from_bytes(rewrite_header(bytes(data), lambda b: b.__setitem__(k - 14, 2)))
    with pytest.raises(ContainerError, match="without a reference"):
        Packet.from_bytes(make_packet().to_bytes()).__class__(**{**make_packet().__dict__, "ref_shift": (1, 0)}).to_bytes()
    p = replace(p, ref_shift=(10**9, 0))
    with pytest.raises(ContainerError, match="out of range"):
        p.to_bytes()
    with pytest.raises(ContainerError, match="64 lowercase hex"):
        replace(p, ref_hash="xyz", ref_shift=(0, 0)).to_bytes()


# ----------------------------------------------------------------------------- format version 3: the raster record
def raster_packet() -> Packet:
    from refscale.raster import RasterRecord

    p = make_packet()
    p = replace(p, raster=RasterRecord(dtype="uint16", band_count=13, bands=[4, 3, 2], ranges=[(120.0, 3100.0), (90.0, 2800.0), (60.0, 2500.0)],
                            descriptions=["B04", "B03", None], rule="p0.1,99.9", nodata=0.0,
                            crs='PROJCS["WGS 84 / UTM zone 31N",GEOGCS["WGS 84"]]', transform=(10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0)))
    return p


def test_raster_record_is_version_3_and_matches_docs():
    p = raster_packet()
    data = p.to_bytes()
    spec = spec_read(data)
    assert spec["version"] == 3 and spec["raster"]["bands"] == [4, 3, 2] and spec["raster"]["band_count"] == 13
    assert spec["raster"]["ranges"][0] == [120.0, 3100.0] and spec["raster"]["transform"][0] == 10.0
    assert spec["raster"]["descriptions"] == ["B04", "B03", None] and spec["raster"]["nodata"] == 0.0
    assert set(spec["raster"]) == {"v", "dtype", "band_count", "bands", "descriptions", "ranges", "rule", "nodata", "crs", "transform"}
    q = Packet.from_bytes(data)
    assert q.version == 3 and q.raster == p.raster and np.array_equal(q.lr, p.lr)
    sizes = section_sizes(data)
    assert sizes["raster"] > 0 and sizes["total"] == len(data) == sizes["header"] + sizes["lr"] + sizes["side"] + sizes["raster"]
    assert inspect(data)["raster"]["crs"] == "WGS 84 / UTM zone 31N"
    plain = make_packet().to_bytes()  # no record: version 2, as before
    assert read_header(plain).version == 2 and spec_read(plain)["raster"] is None


def test_raster_record_with_a_mask_is_record_version_2_and_matches_docs():
    from refscale.raster import Mask

    p = raster_packet()
    h, w = p.size
    invalid = np.zeros((3, h, w), bool)
    invalid[:, :2] = True
    invalid[1, 5, 7] = True  # one band differs: three planes
    p.raster.mask = Mask.from_bool(invalid)
    data = p.to_bytes()
    spec = spec_read(data)
    assert spec["version"] == 3 and spec["raster"]["v"] == 2 and spec["raster"]["mask"]["planes"] == 3
    assert np.array_equal(spec["mask"], invalid)
    q = Packet.from_bytes(data)
    assert q.raster == p.raster and np.array_equal(q.raster.mask.rows(), invalid)
    invalid[1, 5, 7] = False
    assert Mask.from_bool(invalid).planes == 1  # shared by all bands: stored once
    p.raster.mask = Mask.from_bool(invalid[:, :, 1:])
    with pytest.raises(ContainerError, match="mask"):  # a mask of another size than the image
        p.to_bytes()
    assert spec_read(raster_packet().to_bytes())["raster"]["v"] == 1  # without a mask: record version 1, as before


def test_raster_record_damage_is_refused():
    data = raster_packet().to_bytes()
    h = read_header(data)
    assert h.raster_length > 0
    for cut in (1, h.raster_length // 2, h.raster_length):
        with pytest.raises(ContainerError, match="truncated"):
            Packet.from_bytes(data[:-cut])
    bad = bytearray(data)
    bad[-3] ^= 0x20
    with pytest.raises(ContainerError, match="raster record section checksum"):
        Packet.from_bytes(bytes(bad))
    # a valid CRC over a record that is not valid JSON / breaks a rule
    start = h.total_bytes - h.raster_length
    for blob in (zlib.compress(b"{}"), zlib.compress(b'{"v": 1'), b"not zlib"):
        body = bytearray(data[14:h.header_bytes - 4])
        body[-8:] = struct.pack("<II", len(blob), zlib.crc32(blob))
        head = data[:10] + struct.pack("<I", len(body)) + bytes(body)
        forged = head + struct.pack("<I", zlib.crc32(head)) + data[h.header_bytes:start] + blob
        with pytest.raises(ContainerError, match="raster record"):
            Packet.from_bytes(forged)
    v2 = bytearray(data)  # version 2 cannot carry one
    v2[8] = 2
    with pytest.raises(ContainerError):
        Packet.from_bytes(rewrite_header(bytes(v2), lambda b: None))


def test_reference_fingerprint_is_pinned():
    # docs/format.md: SHA-256 of b"refscale-reference-v1", <III H W C, then the 8-bit pixels in C order;
    # a change here breaks every file written before it. The strip-by-strip hasher gives the same.
    from refscale.container import reference_fingerprint, reference_hasher

    a = (np.arange(5 * 7 * 3, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(5, 7, 3)
    golden = "4c8189a23377ba44f9af81068a944e8a76ef00d9dc8f81ad32a40a7849f2f4e8"
    assert reference_fingerprint(a) == golden
    h = reference_hasher(a.shape)
    for rows in (a[:2], a[2:]):
        h.update(rows.tobytes())
    assert h.hexdigest() == golden


# ----------------------------------------------------------------------------- format version 5: the verification record
def verified_packet(fallback=None):
    from refscale.container import Verification

    p = make_packet(h=70, w=45)  # padded 70 x 46: 3 x 2 blocks of 32
    rows, cols = Verification.grid(p.padded_size, 32)
    fb = np.zeros((rows, cols), bool) if fallback is None else fallback
    p = replace(p, verification=Verification(block=32, seed=7, temperature=0.8, fallback=fb))
    return p


def test_verification_record_round_trips_and_matches_docs():
    fb = np.array([[True, False], [False, False], [True, True]])
    p = verified_packet(fb)
    data = p.to_bytes()
    spec = spec_read(data)
    assert spec["version"] == 5
    v = spec["verification"]
    assert (v["block"], v["seed"], v["temperature"]) == (32, 7, 0.8) and np.array_equal(v["fallback"], fb)
    q = Packet.from_bytes(data)
    assert q.version == 5 and q.verification.block == 32 and q.verification.seed == 7
    assert q.verification.temperature == 0.8 and np.array_equal(q.verification.fallback, fb)
    assert q.info()["verification"]["fallback_blocks"] == 3
    from refscale.container import inspect

    assert inspect(data)["verification"] == {"block": 32, "seed": 7, "temperature": 0.8, "blocks": 6, "fallback_blocks": 3}
    plain = make_packet(h=70, w=45).to_bytes()  # without a record: the older version, byte for byte
    assert read_header(plain).version == 2 and len(plain) < len(data)


def test_verification_record_refused_when_inconsistent():
    from refscale.container import Verification

    p = verified_packet()
    p = replace(p, verification=Verification(block=32, seed=0, temperature=1.0, fallback=np.zeros((2, 2), bool)))  # 3 rows needed
    data = p.to_bytes()
    with pytest.raises(ContainerError, match="does not cover"):
        Packet.from_bytes(data)
    p = replace(p, verification=Verification(block=33, seed=0, temperature=1.0, fallback=np.zeros((3, 2), bool)))
    with pytest.raises(ContainerError, match="multiple of the scale"):
        Packet.from_bytes(p.to_bytes())
    good = bytearray(verified_packet().to_bytes())
    h = read_header(bytes(good))
    v4 = bytearray(good)
    v4[8:10] = b"\x04\x00"  # version 4 has no verification fields: the header no longer parses
    with pytest.raises(ContainerError):
        Packet.from_bytes(bytes(v4))
    start = h.total_bytes - h.verify_length
    cut = bytes(good[:start + 18]) + zlib.compress(b"\xff" * 9)  # a zlib stream of the wrong size, CRC fixed up
    body_end = 14 + struct.unpack_from("<I", good, 10)[0]
    patched = bytearray(cut)
    struct.pack_into("<II", patched, body_end - 8, len(cut) - start, zlib.crc32(cut[start:]))
    struct.pack_into("<I", patched, body_end, zlib.crc32(bytes(patched[:body_end])))
    with pytest.raises(ContainerError, match="wrong size"):
        Packet.from_bytes(bytes(patched))
