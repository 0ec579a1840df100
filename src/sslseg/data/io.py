"""Reading and writing image and label files as numpy arrays (one reader for every format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from sslseg.atomic import atomic_path
from sslseg.errors import DataError

TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
PIL_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
ZARR_EXTENSION = ".zarr"
#: File suffixes (lower case) that `read_image` and `read_label` accept; `.zarr` folders come on top.
IMAGE_EXTENSIONS = TIFF_EXTENSIONS | PIL_EXTENSIONS

_FORMAT_NAMES = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
}
# A leading axis without a meaning (tifffile's I = pages, Q = unknown) up to this size is taken as channels.
_MAX_CHANNEL_FIRST = 4


def is_image_path(path: Path) -> bool:
    """True for a file with an image extension or a `.zarr` folder (hidden files excluded)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix == ZARR_EXTENSION:
        return path.is_dir()
    return suffix in IMAGE_EXTENSIONS and path.is_file()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an H×W×C array (C ≥ 1) in its stored dtype; any problem is a DataError."""
    array = _read_array(Path(path), keep_palette=False)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return array


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map or mask as a 2-D integer array (palette PNGs give their indices, as in VOC)."""
    path = Path(path)
    array = _read_array(path, keep_palette=True)
    if array.ndim == 3:
        array = _single_channel(path, array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(path, "label holds NaN or infinite values; a label map must hold integer ids")
        fraction = array != np.round(array)
        if fraction.any():
            example = array[fraction].flat[0]
            raise DataError(path, f"label holds non-integer values (e.g. {example:g}); expected integer ids")
        lo, hi = array.min(initial=0), array.max(initial=0)
        dtype = np.int32 if lo >= -(2**31) and hi < 2**31 else np.int64
        return array.astype(dtype)
    raise DataError(path, f"label has unsupported data type {array.dtype}; expected integers")


def _single_channel(path: Path, array: np.ndarray) -> np.ndarray:
    """Reduce an H×W×C label to H×W when its colour channels agree (a constant alpha is ignored)."""
    channels = array.shape[2]
    if channels in (2, 4):
        alpha = array[:, :, -1]
        if alpha.size and (alpha == alpha.flat[0]).all():
            array = array[:, :, :-1]
    if array.shape[2] == 1 or (array == array[:, :, :1]).all():
        return array[:, :, 0]
    raise DataError(
        path,
        f"colour mask with {channels} channels that differ; a label must be one channel of integer ids "
        "(convert class colours to class indices first)",
    )


def _read_array(path: Path, keep_palette: bool) -> np.ndarray:
    """Check the path, then dispatch on the extension; returns H×W or H×W×C."""
    suffix = path.suffix.lower()
    if suffix == ZARR_EXTENSION:
        return _read_zarr(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    if suffix not in IMAGE_EXTENSIONS:
        known = ", ".join(sorted(IMAGE_EXTENSIONS | {ZARR_EXTENSION}))
        raise DataError(path, f"unknown image extension '{path.suffix}' (supported: {known})")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    fmt = _FORMAT_NAMES[suffix]
    try:
        if suffix in TIFF_EXTENSIONS:
            return _read_tiff(path)
        if suffix == ".png" and _is_16bit_colour_png(path):
            return _read_png16(path)
        return _read_pil(path, keep_palette)
    except DataError:
        raise
    except PermissionError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror or exc}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"image too large for Pillow's safety limit: {exc}") from None
    except Exception as exc:  # every decoder error (PIL, tifffile, imagecodecs) becomes a DataError
        reason = str(exc).strip() or type(exc).__name__
        raise DataError(path, f"truncated or corrupt {fmt}: {reason}") from None


def _read_tiff(path: Path) -> np.ndarray:
    """Read a 2-D TIFF (optionally with channels, first or last); stacks are refused."""
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise DataError(path, "TIFF holds no image")
        series = tif.series[0]
        same_size = [s for s in tif.series[1:] if s.shape[-2:] == series.shape[-2:]]
        if same_size:
            n = len(tif.series)
            raise DataError(path, f"TIFF holds {n} images; only single 2-D images are supported")
        array = series.asarray()
        axes = series.axes
    keep = [i for i, (ax, n) in enumerate(zip(axes, array.shape, strict=True)) if n > 1 or ax in "YX"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    extra = [ax for ax in axes if ax not in "YX"]
    if not extra:
        return array
    shape_text = f"shape {tuple(array.shape)}, axes {axes}"
    if len(extra) > 1 or "Y" not in axes or "X" not in axes:
        raise DataError(path, f"TIFF is not a 2-D image ({shape_text}); only 2-D images are supported")
    ax = extra[0]
    n = array.shape[axes.index(ax)]
    is_channel = ax in "SC" or (ax in "IQ" and n <= _MAX_CHANNEL_FIRST)
    if not is_channel:
        kind = {"Z": "z-stack", "T": "time series"}.get(ax, "multi-page stack")
        raise DataError(path, f"TIFF is a {kind} of {n} planes ({shape_text}); only 2-D images are supported")
    return np.moveaxis(array, axes.index(ax), -1)


def _is_16bit_colour_png(path: Path) -> bool:
    """Pillow reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits; the IHDR header tells them apart."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    # signature (8) + chunk length (4) + b"IHDR" (4) + width (4) + height (4) + bit depth + colour type
    if len(head) < 26 or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path) -> np.ndarray:
    import imagecodecs  # a dependency of tifffile's compressed formats; only needed here

    return np.asarray(imagecodecs.png_decode(path.read_bytes()))


def _read_pil(path: Path, keep_palette: bool) -> np.ndarray:
    """Decode fully with Pillow (`load()` so truncation shows) and map the mode to a numpy dtype."""
    with Image.open(path) as im:
        im.load()
        if getattr(im, "n_frames", 1) > 1:
            raise DataError(path, f"image has {im.n_frames} frames; only single 2-D images are supported")
        mode = im.mode
        if mode in ("P", "PA"):
            if keep_palette and mode == "P":
                return np.asarray(im)
            im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        elif mode == "RGBa":
            im = im.convert("RGBA")
        elif mode == "La":
            im = im.convert("LA")
        elif mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)  # native byte order
        return np.asarray(im)


def _read_zarr(path: Path) -> np.ndarray:
    """Read a 2-D array (optionally with channels) from a `.zarr` folder; needs the optional zarr package."""
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        import zarr
    except ImportError:
        hint = "pip install 'sslseg[zarr]'"
        raise DataError(path, f"reading .zarr needs the optional 'zarr' package ({hint})") from None
    try:
        node = zarr.open(str(path), mode="r")
        if not hasattr(node, "shape"):  # a group: take its single array, or level "0" of an OME-Zarr
            names = sorted(name for name, _ in node.arrays())
            if "0" in names:
                node = node["0"]
            elif len(names) == 1:
                node = node[names[0]]
            else:
                raise DataError(path, f"zarr group holds {len(names)} arrays; expected one (or '0')")
        array = np.asarray(node[...])
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"unreadable zarr: {str(exc).strip() or type(exc).__name__}") from None
    while array.ndim > 2 and array.shape[0] == 1:  # OME-Zarr keeps singleton t, c, z axes in front
        array = array[0]
    if array.ndim == 3 and array.shape[2] > _MAX_CHANNEL_FIRST and array.shape[0] <= _MAX_CHANNEL_FIRST:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > _MAX_CHANNEL_FIRST):
        raise DataError(path, f"zarr array has shape {array.shape}; only 2-D images are supported")
    return array


def write_label(path: str | Path, labels: np.ndarray) -> None:
    """Write an integer label map (instance ids or class indices) as a compressed TIFF, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image (H×W or H×W×C, any dtype tifffile supports) as a compressed TIFF, atomically."""
    image = np.asarray(image)
    options: dict[str, str] = {}
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3:
        # Say it explicitly: left to itself tifffile stores H×W×5 as five pages and 3×H×W as RGB planes.
        rgb = image.shape[2] in (3, 4) and image.dtype in (np.uint8, np.uint16)
        options = {"photometric": "rgb" if rgb else "minisblack", "planarconfig": "contig"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, compression="zlib", **options)
