"""Reading and writing image and label files as numpy arrays (one reader for every format)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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


def require_zarr(path: Path, doing: str) -> Any:
    """The optional zarr package, or a DataError on `path` saying that `doing` needs it and how to get it."""
    try:
        import zarr
    except ImportError:
        hint = "pip install 'sslseg[zarr]'"
        raise DataError(path, f"{doing} needs the optional 'zarr' package ({hint})") from None
    return zarr


def _read_zarr(path: Path) -> np.ndarray:
    """Read a 2-D array (optionally with channels) from a `.zarr` folder; needs the optional zarr package."""
    if not path.exists():
        raise DataError(path, "file not found")
    zarr = require_zarr(path, "reading .zarr")
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


def write_label(path: str | Path, labels: np.ndarray, pixel_size: tuple[float, float] | None = None) -> None:
    """Write an integer label map (instance ids or class indices) as a compressed TIFF, atomically; with a
    (y, x) `pixel_size` in µm the file carries it (see `pixel_size_options`)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    options = pixel_size_options(pixel_size, np.dtype(dtype), tiled=False)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", **options)


#: Tile side of the tiled BigTIFF label maps written for large images (readers fetch one tile at a time).
LABEL_TILE = 512


def write_label_tiles(
    path: str | Path,
    shape: tuple[int, int],
    bands: Iterable[tuple[int, np.ndarray]],
    pixel_size: tuple[float, float] | None = None,
    tile: int = LABEL_TILE,
) -> None:
    """Write a large label map as a tiled, compressed BigTIFF (uint32), atomically, from `bands`: (first row,
    rows × W array) in order, each a whole number of `tile` rows except the last, so that no more than a band
    is ever held. The pixel size travels as OME-XML and resolution tags."""
    h, w = shape

    def tiles() -> Iterator[np.ndarray]:
        expected = 0
        for y0, band in bands:
            if y0 != expected or band.shape[1] != w or (band.shape[0] % tile and y0 + band.shape[0] != h):
                raise ValueError(f"band at row {y0} of shape {band.shape} does not continue the label map")
            expected = y0 + band.shape[0]
            for ty in range(0, band.shape[0], tile):
                rows = band[ty : ty + tile]
                for tx in range(0, w, tile):
                    out = np.zeros((tile, tile), np.uint32)
                    part = rows[:, tx : tx + tile]
                    out[: part.shape[0], : part.shape[1]] = part
                    yield out
        if expected != h:
            raise ValueError(f"the bands ended at row {expected} of {h}")

    options = pixel_size_options(pixel_size, np.dtype(np.uint32), tiled=True)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(h, w),
            dtype=np.uint32,
            tile=(tile, tile),
            compression="zlib",
            bigtiff=True,
            **options,
        )


def pixel_size_options(
    pixel_size: tuple[float, float] | None, dtype: np.dtype, tiled: bool
) -> dict[str, object]:
    """tifffile.imwrite options that record a (y, x) pixel size in µm where Fiji, QuPath and napari look
    for it: ImageJ metadata (unit micron) for 8/16-bit untiled maps, which plain ImageJ reads; OME-XML
    (PhysicalSizeX/Y) otherwise, as ImageJ's format has no 32-bit integers or tiles, with the TIFF
    resolution tags in centimetres beside it. None: no options (the file says nothing of its size)."""
    if pixel_size is None:
        return {}
    py, px = (float(v) for v in pixel_size)
    if not (py > 0 and px > 0):
        raise ValueError(f"pixel size must be positive µm, got {pixel_size}")
    if not tiled and dtype.itemsize <= 2:
        return {"imagej": True, "resolution": (1 / px, 1 / py), "metadata": {"unit": "micron", "axes": "YX"}}
    meta = {"axes": "YX", "PhysicalSizeX": px, "PhysicalSizeXUnit": "µm"}
    meta |= {"PhysicalSizeY": py, "PhysicalSizeYUnit": "µm"}
    return {"ome": True, "metadata": meta, "resolution": (1e4 / px, 1e4 / py), "resolutionunit": "CENTIMETER"}


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


# --- physical pixel size -----------------------------------------------------------------------------

#: Micrometres per unit, for the unit names OME-XML, ImageJ and TIFF resolution tags use.
_MICRONS_PER_UNIT = {
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, which some writers use instead of the micro sign
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}
# Image editors stamp these resolutions on every file they save; they say nothing about the specimen.
_SCREEN_DPI = (72.0, 96.0)


def read_pixel_size(path: str | Path) -> tuple[float, float] | None:
    """The (y, x) pixel size of an image file in µm, or None when the file does not say.

    Read from OME-XML (PhysicalSizeY/X), then ImageJ metadata (its unit with the resolution tags), then plain
    TIFF resolution tags in inches or centimetres (72 and 96 dpi are software defaults, so ignored). Only
    TIFF files carry it here; other formats give None."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if tif.is_ome and tif.ome_metadata:
                size = _ome_pixel_size(tif.ome_metadata)
                if size is not None:
                    return size
            x_res, y_res = (float(r) for r in page.resolution)
            if tif.is_imagej:
                unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
                microns = _microns(unit)
                if microns is None or x_res <= 0 or y_res <= 0:
                    return None
                return microns / y_res, microns / x_res
            unit_code = page.resolutionunit
    except Exception as exc:  # any tifffile error becomes the one-line DataError a batch reports
        raise DataError(path, f"cannot read the TIFF's metadata: {exc}") from None
    microns = {
        tifffile.RESUNIT.INCH: 25400.0,
        tifffile.RESUNIT.CENTIMETER: 1e4,
        tifffile.RESUNIT.MILLIMETER: 1e3,
        tifffile.RESUNIT.MICROMETER: 1.0,
    }.get(unit_code)
    if microns is None or x_res <= 0 or y_res <= 0:
        return None
    if unit_code == tifffile.RESUNIT.INCH and x_res in _SCREEN_DPI and y_res in _SCREEN_DPI:
        return None
    return microns / y_res, microns / x_res


def _microns(unit: str) -> float | None:
    """Micrometres per `unit` (ImageJ writes e.g. 'micron', 'um' or the escaped '\\u00B5m'); None if unknown."""
    unit = unit.replace("\\u00B5", "µ").replace("\\u03BC", "μ").strip().lower()
    return _MICRONS_PER_UNIT.get(unit)


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
    """PhysicalSizeY/X of the first image's Pixels element, in µm (the schema's default unit)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        microns = _microns(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or microns is None or float(value) <= 0:
            return None
        sizes.append(float(value) * microns)
    return sizes[0], sizes[1]
