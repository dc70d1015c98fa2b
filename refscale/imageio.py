"""Reading and writing image files: the only place where uint8 meets the library's float tensors.

* :func:`read_image` — a file to ``[1,3,H,W]`` float32 in [0,1]. 8-bit RGB as is; greyscale,
  grey+alpha, RGBA, palette, CMYK are converted to RGB with a ``warnings.warn``; 16-bit PNG/TIFF
  keep their precision (divided by 65535; via imagecodecs when installed). Missing, unreadable
  or decompression-bomb files raise :class:`~refscale.errors.InputError`.
* :func:`as_image_tensor` — tensors, numpy arrays or paths to ``[1,3,H,W]`` float32.
* :func:`write_image` — ``[1,3,H,W]`` / ``[3,H,W]`` to an 8-bit file (format by suffix), atomically.
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


def _decode_16bit(data: bytes, fmt: str) -> np.ndarray | None:
    """16-bit PNG or TIFF through imagecodecs (Pillow reduces 16-bit RGB to 8 bits); None if not
    16-bit or imagecodecs is missing."""
    try:
        import imagecodecs
    except ImportError:
        return None
    if fmt == "PNG":
        if len(data) > 25 and data[24] == 16:  # IHDR bit depth
            return imagecodecs.png_decode(data)
        return None
    if fmt == "TIFF":
        arr = imagecodecs.tiff_decode(data)
        return arr if arr.dtype == np.uint16 else None
    return None


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` float32 in [0,1]."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    try:
        data = p.read_bytes()
        with Image.open(p) as im:
            fmt = im.format or ""
            arr16 = _decode_16bit(data, fmt)
            if arr16 is not None:
                return _array_to_tensor(arr16, p.name)
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
                    warnings.warn(f"{p.name} has mode {mode}; converted to RGB", stacklevel=2)
                has_alpha = mode in ("P", "PA") and "transparency" in im.info
                arr = np.array(im.convert("RGBA" if has_alpha else "RGB"))
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return _array_to_tensor(arr, p.name)


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
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
