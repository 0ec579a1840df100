"""Images read a region at a time, so that images larger than memory can be segmented block by block:
TIFF/BigTIFF (one level of a pyramidal OME-TIFF, one series of a multi-series file), OME-Zarr and, read
whole, every other format `sslseg.data.io` reads."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sslseg.data.io import (
    _MAX_CHANNEL_FIRST,
    TIFF_EXTENSIONS,
    ZARR_EXTENSION,
    _microns,
    read_image,
    read_pixel_size,
    require_zarr,
)
from sslseg.errors import DataError


@dataclass
class ImageSource:
    """One 2-D image (H×W×C) whose regions are read on demand; `array` is any object numpy-style slicing
    reads from (a numpy array, memmap or zarr array) and `axes` tells which of its axes are Y, X and C."""

    path: Path
    array: Any
    yx_axes: tuple[int, int]
    channel_axis: int | None
    pixel_size: tuple[float, float] | None
    lazy: bool
    closer: Any = None  # what holds the file open (a TiffFile), closed by `close`

    def close(self) -> None:
        """Release the file."""
        if self.closer is not None:
            self.closer.close()
            self.closer = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the image."""
        s = self.array.shape
        c = s[self.channel_axis] if self.channel_axis is not None else 1
        return int(s[self.yx_axes[0]]), int(s[self.yx_axes[1]]), int(c)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region rows y0:y1, columns x0:x1 as an H×W×C array in the stored dtype."""
        index: list[Any] = [0] * len(self.array.shape)
        index[self.yx_axes[0]] = slice(y0, y1)
        index[self.yx_axes[1]] = slice(x0, x1)
        if self.channel_axis is not None:
            index[self.channel_axis] = slice(None)
        try:
            region = np.asarray(self.array[tuple(index)])
        except Exception as exc:  # a decoder error in a damaged tile surfaces here, mid-image
            raise DataError(self.path, f"cannot read rows {y0}:{y1}, columns {x0}:{x1}: {exc}") from None
        kept = sorted(a for a in (*self.yx_axes, self.channel_axis) if a is not None)
        order = [kept.index(self.yx_axes[0]), kept.index(self.yx_axes[1])]
        if self.channel_axis is not None:
            order.append(kept.index(self.channel_axis))
            region = region.transpose(order)
        else:
            region = region.transpose(order)[:, :, None]
        if region.dtype == bool:
            region = region.astype(np.uint8) * 255
        return region

    def read_all(self) -> np.ndarray:
        """The whole image (H×W×C)."""
        h, w, _ = self.shape
        return self.read(0, h, 0, w)


def open_image(path: str | Path, level: int = 0, series: int = 0) -> ImageSource:
    """Open an image for reading by regions. TIFFs (BigTIFF, tiled or striped, pyramidal OME-TIFF) and
    `.zarr` folders (OME-Zarr multiscales or a plain array) are read lazily, TIFF through zarr when it is
    installed, else through a memory map where the file is uncompressed; other files are read whole.
    `level` picks a pyramid level (0 = full resolution) and `series` a TIFF series; one that does not exist
    is a DataError listing those that do. The pixel size (µm) is scaled to the level."""
    path = Path(path)
    if level < 0 or series < 0:
        raise DataError(path, f"level and series count from 0 (got level {level}, series {series})")
    suffix = path.suffix.lower()
    if suffix == ZARR_EXTENSION:
        return _open_zarr(path, level)
    if suffix in TIFF_EXTENSIONS and path.is_file() and path.stat().st_size > 0:
        return _open_tiff(path, level, series)
    if level or series:
        raise DataError(path, f"has a single image; level {level} / series {series} apply to TIFF and Zarr")
    array = read_image(path)
    return ImageSource(path, array, (0, 1), 2, read_pixel_size(path), lazy=False)


def _describe_levels(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(f"{k} ({s[0]}×{s[1]})" for k, s in enumerate(shapes))


def _open_tiff(path: Path, level: int, series: int) -> ImageSource:
    """One level of one series of a TIFF, read lazily."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise DataError(
            path, f"truncated or corrupt TIFF: {str(exc).strip() or type(exc).__name__}"
        ) from None
    try:
        if not tif.series:
            raise DataError(path, "TIFF holds no image")
        if series >= len(tif.series):
            shapes = ", ".join(f"{k} {tuple(s.shape)}" for k, s in enumerate(tif.series))
            raise DataError(path, f"has no series {series}; its series are {shapes}")
        chosen = tif.series[series]
        levels = chosen.levels
        if level >= len(levels):
            yx = [_yx_shape(lv.shape, lv.axes) for lv in levels]
            raise DataError(path, f"has no level {level}; its levels are {_describe_levels(yx)}")
        lv = levels[level]
        yx_axes, channel_axis = _axes(path, tuple(lv.shape), lv.axes)
        size = read_pixel_size(path)
        if size is not None and level:
            full = _yx_shape(levels[0].shape, levels[0].axes)
            here = _yx_shape(lv.shape, lv.axes)
            size = (size[0] * full[0] / here[0], size[1] * full[1] / here[1])
        array, lazy = _tiff_array(path, tif, lv, level, series)
    except DataError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise DataError(
            path, f"truncated or corrupt TIFF: {str(exc).strip() or type(exc).__name__}"
        ) from None
    return ImageSource(path, array, yx_axes, channel_axis, size, lazy, closer=tif)


def _tiff_array(path: Path, tif: tifffile.TiffFile, lv: Any, level: int, series: int) -> tuple[Any, bool]:
    """A sliceable view of one TIFF level: zarr over the file (any compression), a memory map (uncompressed,
    contiguous), or the decoded array with a warning that memory grows with the image."""
    try:
        import zarr
    except ImportError:
        zarr = None
    if zarr is not None:
        try:
            return zarr.open(tif.series[series].aszarr(level=level), mode="r"), True
        except (ValueError, TypeError, ImportError):
            pass  # a tifffile older than its zarr (before 2025.5.21 with zarr 3): read it another way
    try:
        return tifffile.memmap(path, series=series, level=level, mode="r"), True
    except ValueError:
        warnings.warn(
            f"{path}: compressed TIFF read whole (install sslseg[zarr] to read it one region at a time)",
            stacklevel=3,
        )
        return lv.asarray(), False


def _yx_shape(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _axes(path: Path, shape: tuple[int, ...], axes: str) -> tuple[tuple[int, int], int | None]:
    """Positions of Y, X and the channel axis (if any) in an array of `axes` (tifffile letters); a third
    axis longer than one that is not channels (z, time) is a DataError, as `read_image` says."""
    if "Y" not in axes or "X" not in axes:
        raise DataError(path, f"TIFF is not a 2-D image (shape {shape}, axes {axes})")
    extra = [i for i, ax in enumerate(axes) if ax not in "YX" and shape[i] > 1]
    if len(extra) > 1:
        raise DataError(
            path, f"TIFF is not a 2-D image (shape {shape}, axes {axes}); only 2-D images are supported"
        )
    channel = None
    if extra:
        i = extra[0]
        ax, n = axes[i], shape[i]
        if not (ax in "SC" or (ax in "IQ" and n <= _MAX_CHANNEL_FIRST)):
            kind = {"Z": "z-stack", "T": "time series"}.get(ax, "multi-page stack")
            raise DataError(path, f"TIFF is a {kind} of {n} planes (shape {shape}, axes {axes})")
        channel = i
    return (axes.index("Y"), axes.index("X")), channel


def _open_zarr(path: Path, level: int) -> ImageSource:
    """Level `level` of an OME-Zarr multiscales image (or a plain zarr array), read lazily; the pixel size
    comes from the level's scale transformation when its axes are in a length unit."""
    if not path.is_dir():
        raise DataError(path, "file not found")
    zarr = require_zarr(path, "reading .zarr")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DataError(path, f"unreadable zarr: {str(exc).strip() or type(exc).__name__}") from None
    pixel_size = None
    axes_names: list[str] | None = None
    if hasattr(node, "shape"):
        if level:
            raise DataError(path, f"has no level {level}; it is a single array (level 0 only)")
        array = node
    else:
        attrs = dict(node.attrs)
        multiscales = (attrs.get("ome") or attrs).get("multiscales")
        if multiscales:
            ms = multiscales[0]
            datasets = ms.get("datasets", [])
            if level >= len(datasets):
                shapes = [tuple(node[d["path"]].shape[-2:]) for d in datasets]
                raise DataError(path, f"has no level {level}; its levels are {_describe_levels(shapes)}")
            array = node[datasets[level]["path"]]
            axes = ms.get("axes") or []
            axes_names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] or None
            pixel_size = _ngff_pixel_size(axes, datasets[level], ms)
        else:
            names = sorted(name for name, _ in node.arrays())
            if len(names) != 1:
                raise DataError(
                    path, f"zarr group holds {len(names)} arrays and no multiscales; expected one"
                )
            if level:
                raise DataError(path, f"has no level {level}; it holds a single array (level 0 only)")
            array = node[names[0]]
    shape = tuple(int(n) for n in array.shape)
    if axes_names and len(axes_names) == len(shape):
        letters = "".join(
            {"y": "Y", "x": "X", "c": "C", "z": "Z", "t": "T"}.get(a.lower(), "Q") for a in axes_names
        )
    else:  # no axes metadata: the last two are Y, X; a short axis in front or behind them is channels
        letters = "Q" * (len(shape) - 2) + "YX"
        if len(shape) == 3 and shape[2] <= _MAX_CHANNEL_FIRST < shape[0]:
            letters = "YXC"
    try:
        yx_axes, channel_axis = _axes(path, shape, letters)
    except DataError as exc:
        raise DataError(path, exc.problem.replace("TIFF", "zarr array")) from None
    return ImageSource(path, array, yx_axes, channel_axis, pixel_size, lazy=True)


def _ngff_pixel_size(
    axes: list[Any], dataset: dict[str, Any], multiscale: dict[str, Any]
) -> tuple[float, float] | None:
    """(y, x) µm of one OME-NGFF dataset: its scale transformation (times the multiscale's own, if any) on
    the y and x axes, converted from their unit; None when a unit is missing or not a length."""
    if not axes or not all(isinstance(a, dict) for a in axes):
        return None
    names = [a.get("name", "").lower() for a in axes]
    if "y" not in names or "x" not in names:
        return None
    scale = np.ones(len(axes))
    for transforms in (
        dataset.get("coordinateTransformations", []),
        multiscale.get("coordinateTransformations", []),
    ):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                scale = scale * np.asarray(t["scale"], float)
    out = []
    for name in ("y", "x"):
        axis = axes[names.index(name)]
        microns = _microns(str(axis.get("unit", "")))
        if microns is None:
            return None
        out.append(float(scale[names.index(name)]) * microns)
    return out[0], out[1]


def write_ome_zarr_labels(
    path: Path, shape: tuple[int, int], pixel_size: tuple[float, float] | None, chunk: int
) -> Any:
    """Create an OME-Zarr (NGFF 0.4) image group at `path` holding one uint32 y×x array '0' of `shape`, chunked
    `chunk`², with the pixel size (µm) as its scale; returns the array, to be filled band by band."""
    zarr = require_zarr(path, "writing OME-Zarr")

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array("0", shape=shape, chunks=(chunk, chunk), dtype=np.uint32, fill_value=0)
    scale = list(pixel_size) if pixel_size is not None else [1.0, 1.0]
    unit = {"unit": "micrometer"} if pixel_size is not None else {}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "labels",
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
    json.dumps(group.attrs["multiscales"])  # fails early on values zarr could not store
    return array
