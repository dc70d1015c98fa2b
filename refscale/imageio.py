"""Reading and writing image files: the only place where uint8 meets the library's float tensors.

* :func:`read_image` — a file to ``[1,3,H,W]`` float32 in [0,1]. 8-bit RGB as is; greyscale,
  grey+alpha, RGBA, palette, CMYK are converted to RGB with a ``warnings.warn``; 16-bit PNG/TIFF
  keep their precision (divided by 65535; colour through imagecodecs, an error without it); a TIFF
  with other than 1 or 3 bands is an error (a 4th band is never taken for alpha). Missing, unreadable
  or decompression-bomb files raise :class:`~refscale.errors.InputError`, and so do files holding
  more than one image (an animated GIF, PNG or WebP, a multi-page TIFF: :func:`frame_count`)
  rather than being read as their first frame.
* :func:`as_image_tensor` — tensors, numpy arrays or paths to ``[1,3,H,W]`` float32.
* :func:`write_image` — ``[1,3,H,W]`` / ``[3,H,W]`` to an 8-bit file (format by suffix), atomically,
  with the mode the umask gives new files (:func:`publish`).

Files with georeferencing, more than three bands or more than 8 bits that must come back in
their own dtype go through :mod:`refscale.raster` (a recorded, invertible intensity mapping).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from refscale.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")


def _array_to_tensor(arr: np.ndarray, what: str) -> torch.Tensor:
    """HxW / HxWxC array (uint8, uint16 or float in [0,1]) -> [1,3,H,W] float32, warning on conversions."""
    if arr.dtype == np.uint8:
        a = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        a = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):  # e.g. Pillow's 32-bit "I" mode for 16-bit greyscale
        a = arr.astype(np.float32) / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    else:
        raise InputError(f"{what}: unsupported pixel type {arr.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise InputError(f"{what}: expected an HxW or HxWxC image, got shape {arr.shape}")
    c = a.shape[2]
    if c == 1:
        warnings.warn(f"{what} is greyscale; converted to RGB", stacklevel=3)
        a = np.repeat(a, 3, axis=2)
    elif c == 2:
        warnings.warn(f"{what} is greyscale with alpha; alpha dropped, converted to RGB", stacklevel=3)
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif c == 4:
        warnings.warn(f"{what} has an alpha channel; dropped", stacklevel=3)
        a = a[:, :, :3]
    elif c != 3:
        raise InputError(f"{what}: expected 1, 3 or 4 channels, got {c}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0).contiguous()


CODECS_EXTRA_HINT = "pip install 'refscale[codecs]'"


def _png_bit_depth(data: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG's IHDR, or None if ``data`` is not a PNG."""
    if len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def _decode_16bit(data: bytes, fmt: str, name: str) -> np.ndarray | None:
    """16-bit PNG or TIFF through imagecodecs (Pillow reduces 16-bit RGB to 8 bits); None if not
    16-bit (or a 16-bit greyscale PNG, which Pillow reads exactly). A 16-bit colour PNG without
    imagecodecs is an error naming the extra: never reduced to 8 bits silently."""
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if fmt == "PNG":
        depth = _png_bit_depth(data)
        if depth is None or depth[0] != 16:
            return None
        if imagecodecs is not None:
            return imagecodecs.png_decode(data)
        if depth[1] in (0,):  # greyscale: Pillow's I;16 keeps the 16 bits
            return None
        raise InputError(f"{name} is a 16-bit colour PNG; reading it without losing bits needs imagecodecs "
                         f"({CODECS_EXTRA_HINT})")
    if fmt == "TIFF" and imagecodecs is not None:
        arr = imagecodecs.tiff_decode(data)
        return arr if arr.dtype == np.uint16 else None
    return None


def _frames(im: Image.Image) -> int:
    """The full images in an open file: the frames of an animation (GIF, APNG, WebP), the pages of
    a TIFF (not its reduced-resolution overviews or masks, NewSubfileType bits 1 and 4); 1 for
    an MPO (a camera JPEG: the primary image first, then previews or depth maps)."""
    n = int(getattr(im, "n_frames", 1) or 1)
    if n <= 1 or im.format == "MPO":
        return 1
    if im.format == "TIFF":
        full = 0
        for i in range(n):
            im.seek(i)
            full += not int(im.tag_v2.get(254, 0)) & 5
        im.seek(0)
        return full
    return n


def frame_count(path: str | os.PathLike) -> int:
    """:func:`_frames` of a file Pillow opens; 1 for one it cannot (other readers judge it)."""
    try:
        with Image.open(path) as im:
            return _frames(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def multi_frame_error(name: str, n: int) -> InputError:
    return InputError(f"{name} holds {n} images (an animation or a multi-page file); refscale reads one image per "
                      "file: save the frame you want on its own")


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (Pillow, 16-bit through imagecodecs) as an ``HxW`` or ``HxWxC`` array in
    its own dtype (uint8, uint16, float32; palette, CMYK, ... converted to RGB with a warning); a
    file of several images (:func:`_frames`) is refused."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    try:
        data = p.read_bytes()
        with Image.open(p) as im:
            fmt = im.format or ""
            frames = _frames(im)
            if frames > 1:
                raise multi_frame_error(p.name, frames)
            arr16 = _decode_16bit(data, fmt, p.name)
            if arr16 is not None:
                return arr16
            im.load()
            mode = im.mode
            if mode in ("RGB", "L", "LA", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.array(im)
                if mode == "F":
                    arr = arr.astype(np.float32)
                if mode.startswith("I;16"):
                    arr = arr.astype(np.uint16)
            else:  # palette, 1-bit, CMYK, YCbCr, ...
                if mode not in ("P",):
                    warnings.warn(f"{p.name} has mode {mode}; converted to RGB", stacklevel=3)
                has_alpha = mode in ("P", "PA") and "transparency" in im.info
                arr = np.array(im.convert("RGBA" if has_alpha else "RGB"))
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return arr


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` float32 in [0,1] (16-bit divided by 65535: precision
    kept, no record; files with georeferencing, more than 3 bands or a recorded intensity mapping
    go through :func:`refscale.raster.read_raster`)."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        tags = tiff_tags(p)
        bands = tags.get(TIFF_SAMPLES_PER_PIXEL, 1) if tags else 1
        if bands not in (1, 3):  # a 4th band is never taken for alpha in a TIFF (e.g. RGB + NIR)
            raise InputError(f"{p.name} has {bands} bands; choose the three the model sees "
                             f"(refscale encode --bands, refscale.raster.read_raster(path, bands=...))")
    return _array_to_tensor(read_array(p), p.name)


#: TIFF tags read by :func:`tiff_tags`
TIFF_SAMPLES_PER_PIXEL, TIFF_BITS_PER_SAMPLE, TIFF_PLANAR_CONFIG = 277, 258, 284
#: GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
GEOTIFF_TAGS = {33550: "ModelPixelScale", 33922: "ModelTiepoint", 34264: "ModelTransformation", 34735: "GeoKeyDirectory"}


def tiff_tags(path: str | os.PathLike) -> dict[int, int] | None:
    """The tags of a TIFF's first image (classic or BigTIFF): ``{tag: value}`` (the value of a
    single SHORT/LONG, else 0), read without decoding pixels; None if the file is not a TIFF."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                big, e = False, "<" if head[:2] == b"II" else ">"
                (ifd,) = struct.unpack(e + "I", head[4:8])
            elif head[:4] in (b"II+\x00", b"MM\x00+"):
                big, e = True, "<" if head[:2] == b"II" else ">"
                (ifd,) = struct.unpack(e + "Q", head[8:16])
            else:
                return None
            f.seek(ifd)
            count_fmt, entry_size = (e + "Q", 20) if big else (e + "H", 12)
            raw = f.read(struct.calcsize(count_fmt))
            (n,) = struct.unpack(count_fmt, raw)
            table = f.read(min(n, 4096) * entry_size)
    except (OSError, struct.error):
        return None
    tags = {}
    for k in range(len(table) // entry_size):
        entry = table[k * entry_size:(k + 1) * entry_size]
        tag, typ = struct.unpack(e + "HH", entry[:4])
        (count,) = struct.unpack(e + ("Q" if big else "I"), entry[4:12] if big else entry[4:8])
        value_at = entry[12:] if big else entry[8:]
        if count != 1:
            tags[tag] = 0
        elif typ == 3:  # SHORT
            tags[tag] = struct.unpack(e + "H", value_at[:2])[0]
        elif typ in (4, 16):  # LONG, LONG8
            tags[tag] = struct.unpack(e + ("Q" if typ == 16 else "I"), value_at[:8 if typ == 16 else 4])[0]
        else:
            tags[tag] = 0
    return tags


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def is_greyscale_file(path: str | os.PathLike) -> bool:
    """True when the file stores a greyscale image (e.g. Set14's bridge.png); reads the header only.
    An RGB file whose channels happen to be equal is *not* greyscale (the benchmarks convert it)."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                return im.palette is not None and im.palette.mode == "L"
            return im.mode in _GREY_MODES
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def as_image_tensor(x) -> torch.Tensor:
    """Accept a tensor ``[3,H,W]``/``[1,3,H,W]`` (float in [0,1] or uint8), a numpy ``HxWx3``
    array (uint8 or float in [0,1]) or a path; return ``[1,3,H,W]`` float32."""
    if isinstance(x, (str, os.PathLike)):
        return read_image(x)
    if isinstance(x, np.ndarray):
        return _array_to_tensor(x, "array")
    if isinstance(x, torch.Tensor):
        t = x.detach() if not x.requires_grad else x
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 3:
            raise InputError(f"expected an image tensor [3,H,W] or [1,3,H,W], got shape {tuple(x.shape)}")
        if t.dtype == torch.uint8:
            return t.float() / 255.0
        if not t.is_floating_point():
            raise InputError(f"unsupported tensor dtype {t.dtype}")
        return t.float()
    raise InputError(f"cannot use {type(x).__name__} as an image (tensor, array or path expected)")


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise InputError(f"cannot write {path.name}: unknown image suffix {ext or '(none)'}")
    return fmt


def write_image(x, path: str | os.PathLike, overwrite: bool = False, **save_options) -> Path:
    """Write one image as 8 bits (``round(clamp(x)*255)``), format by suffix, atomically
    (temporary file + ``os.replace``). Refuses an existing file unless ``overwrite``.
    ``save_options`` go to Pillow (e.g. ``quality=95`` for JPEG)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"{p} exists; refusing to overwrite it")
    fmt = _format_for(p)
    t = as_image_tensor(x)
    arr = torch.round(t[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr, mode="RGB").save(f, format=fmt, **save_options)
        publish(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file (``mkstemp`` creates them 0600) the mode a new file gets
    under the process umask, then move it into place atomically (``os.replace``)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
