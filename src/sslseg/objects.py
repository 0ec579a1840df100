"""Objects of a label map in the formats other tools open: a measurements table (CSV), QuPath GeoJSON and an
ImageJ/Fiji ROI zip, with sizes in µm when the image's pixel size is known.

Coordinates: polygons (GeoJSON, ROI) use the convention of QuPath and ImageJ, where pixel (row r, column c)
covers the square x ∈ [c, c+1), y ∈ [r, r+1); measured centroids and bounding boxes are array indices, as in
scikit-image (a pixel's centre is at its index). Each polygon is the object's outer contour (holes filled).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import roifile
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient
from skimage.measure import find_contours, label, regionprops, regionprops_table

from sslseg.atomic import atomic_path, write_text


def semantic_objects(class_map: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Each connected region (8-connected) of each non-background class as one object: an instance label map
    and the class of every object id."""
    instances = np.zeros(class_map.shape, np.int32)
    classes: dict[int, int] = {}
    offset = 0
    for k in np.unique(class_map):
        if k == 0:
            continue
        regions, n = label(class_map == k, connectivity=2, return_num=True)
        instances[regions > 0] = regions[regions > 0] + offset
        classes.update({offset + i: int(k) for i in range(1, n + 1)})
        offset += n
    return instances, classes


class RegionStream:
    """The objects of a class map that arrives a band of rows at a time (block-wise prediction), each
    handed on once it is complete: the connected regions of each class, exactly as `semantic_objects` finds
    them in the whole map, numbered 1, 2, … in the order they complete. Rows are kept only from the top of
    the highest region still open (one touching the last row received), so memory follows the tallest region,
    not the image."""

    def __init__(self, on_objects: Callable[[np.ndarray, dict[int, int], int], None]) -> None:
        self.on_objects = on_objects  # (instance map of the completed objects, their classes, first row)
        self.rows: np.ndarray | None = None  # class map rows from self.top on, completed objects zeroed
        self.top = 0
        self.next_id = 1

    def add(self, y0: int, band: np.ndarray) -> None:
        """The class map's rows y0 … y0 + len(band); bands must come in order, without gaps."""
        if self.rows is None:
            self.rows, self.top = band.copy(), y0
        elif y0 != self.top + len(self.rows):
            raise ValueError(f"band at row {y0} does not follow row {self.top + len(self.rows) - 1}")
        else:
            self.rows = np.concatenate([self.rows, band])
        self._emit(final=False)

    def finish(self) -> None:
        """Hand on the objects still open: the map is complete."""
        if self.rows is not None:
            self._emit(final=True)
            self.rows = None

    def _emit(self, final: bool) -> None:
        instances, classes = semantic_objects(self.rows)
        n = len(classes)
        done = np.ones(n + 1, bool)
        if not final:
            done[np.unique(instances[-1])] = False  # touching the last row: may go on in the next band
        done[0] = False
        if done.any():
            lut = np.zeros(n + 1, np.int64)
            lut[done] = np.arange(self.next_id, self.next_id + int(done.sum()))
            emitted = lut[instances]
            rows = np.nonzero(emitted.any(axis=1))[0]
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            of_class = {int(lut[i]): classes[int(i)] for i in np.nonzero(done)[0]}
            self.next_id += int(done.sum())
            self.on_objects(emitted[r0:r1], of_class, self.top + r0)
            self.rows[emitted > 0] = 0  # handed on: never again
        open_rows = np.nonzero((instances > 0) & ~done[instances])[0]
        drop = int(open_rows[0]) if open_rows.size else len(self.rows)
        self.rows = self.rows[drop:]
        self.top += drop


def measure_objects(
    labels: np.ndarray,
    image: np.ndarray,
    pixel_size: tuple[float, float] | None = None,
    classes: dict[int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
) -> dict[str, np.ndarray]:
    """One row per object of an instance label map: id, [class], centroid, area, perimeter, eccentricity,
        mean intensity of each channel of `image` (H×W×C) and bounding box. Columns name their unit: `_px`
        (pixels; bounding box min inclusive, max exclusive) always, `_um`/`_um2` too when `pixel_size` (y, x in
        µm) is known. Perimeter in µm needs square pixels (NaN otherwise). `origin` (row, column) is where the
    arrays lie in a larger image (a block of one), whose coordinates the positions are given in."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    t = regionprops_table(
        labels,
        image,
        properties=("label", "centroid", "area", "perimeter", "eccentricity", "intensity_mean", "bbox"),
    )
    ids = t["label"].astype(np.int64)
    cols: dict[str, np.ndarray] = {"id": ids}
    if classes is not None:
        cols["class"] = np.array([classes[int(i)] for i in ids], np.int64)
    oy, ox = origin
    t["centroid-0"], t["centroid-1"] = t["centroid-0"] + oy, t["centroid-1"] + ox
    for k, offset in enumerate((oy, ox, oy, ox)):
        t[f"bbox-{k}"] = t[f"bbox-{k}"] + offset
    cols["centroid_y_px"], cols["centroid_x_px"] = t["centroid-0"], t["centroid-1"]
    cols["area_px"], cols["perimeter_px"] = t["area"], t["perimeter"]
    eccentricity = t["eccentricity"]
    if pixel_size is not None:
        py, px = pixel_size
        cols["centroid_y_um"], cols["centroid_x_um"] = t["centroid-0"] * py, t["centroid-1"] * px
        cols["area_um2"] = t["area"] * py * px
        square = math.isclose(py, px, rel_tol=1e-6)
        cols["perimeter_um"] = t["perimeter"] * px if square else np.full(len(ids), np.nan)
        if not square:  # the physical shape differs from the pixel grid's
            eccentricity = regionprops_table(labels, properties=("eccentricity",), spacing=(py, px))[
                "eccentricity"
            ]
    cols["eccentricity"] = eccentricity
    for c in range(image.shape[2]):
        cols[f"mean_intensity_ch{c}"] = t[f"intensity_mean-{c}"]
    for k, name in enumerate(("min_y", "min_x", "max_y", "max_x")):
        cols[f"bbox_{name}_px"] = t[f"bbox-{k}"].astype(np.int64)
    return cols


def object_polygons(labels: np.ndarray, origin: tuple[int, int] = (0, 0)) -> dict[int, Polygon]:
    """The outer contour of every object as a polygon in pixel-corner coordinates (x, y), by object id.

    Marching squares at the 0.5 level of each object's mask, joining diagonal neighbours as the 8-connected
    labelling does; a polygon's area is its pixel count less half a pixel per convex corner. An object in
    several pieces gives its largest piece. `origin` (row, column) shifts the polygons to where `labels`
    lies in a larger image."""
    polygons: dict[int, Polygon] = {}
    for region in regionprops(labels):
        mask = np.pad(region.image, 1).astype(np.float32)  # padding closes contours at the crop's edge
        y0, x0 = region.bbox[0] - 1 + origin[0], region.bbox[1] - 1 + origin[1]
        best: Polygon | None = None
        for contour in find_contours(mask, 0.5, fully_connected="high"):
            if len(contour) < 4:
                continue
            # (row, col) of pixel centres → (x, y) with pixel corners at integers
            poly = Polygon(np.column_stack([contour[:, 1] + x0 + 0.5, contour[:, 0] + y0 + 0.5]))
            if not poly.is_valid:
                poly = _largest_polygon(shapely.make_valid(poly))
            if poly is not None and (best is None or poly.area > best.area):
                best = poly
        if best is not None:
            polygons[int(region.label)] = orient(best.simplify(0), 1.0)  # drop collinear vertices
    return polygons


def _largest_polygon(geometry: Any) -> Polygon | None:
    """The largest polygon in a geometry that make_valid returned (a polygon, multipolygon or collection)."""
    parts = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, Polygon) and g.area > 0]
    return max(parts, key=lambda g: g.area, default=None)


def write_measurements_csv(path: str | Path, table: dict[str, np.ndarray]) -> None:
    """The measurements table as CSV (one row per object), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(list(table))
    for row in zip(*table.values(), strict=True):
        writer.writerow(["" if _is_nan(v) else v for v in (x.item() for x in row)])
    write_text(path, buf.getvalue())


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def objects_geojson(polygons: dict[int, Polygon], table: dict[str, np.ndarray]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection that QuPath imports as detections: one Polygon per object, named by its
    id, with the table's numeric columns as measurements and, for semantic models, the class as
    classification."""
    rows = {int(i): r for r, i in enumerate(table["id"])}
    features = []
    for object_id, poly in polygons.items():
        r = rows[object_id]
        measurements = {
            name: values[r].item() for name, values in table.items() if not _is_nan(values[r].item())
        }
        properties: dict[str, Any] = {
            "objectType": "detection",
            "name": str(object_id),
            "measurements": measurements,
        }
        if "class" in table:
            properties["classification"] = {"name": f"class {int(table['class'][r])}"}
        features.append(
            {"type": "Feature", "geometry": shapely.geometry.mapping(poly), "properties": properties}
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> None:
    """A GeoJSON document, atomically (tuples from shapely become arrays; no NaN reaches the file)."""
    write_text(path, json.dumps(collection, allow_nan=False))


def write_roi_zip(path: str | Path, polygons: dict[int, Polygon]) -> None:
    """An ImageJ/Fiji ROI set (opened by the ROI Manager): one polygon ROI per object, named by its id."""
    rois, names = imagej_rois(polygons, len(str(max(polygons, default=0))))
    with atomic_path(path) as tmp:
        tmp.unlink()  # roiwrite appends to an existing zip; the temporary file must start afresh
        roifile.roiwrite(tmp, rois, name=names)


def imagej_rois(polygons: dict[int, Polygon], width: int) -> tuple[list[roifile.ImagejRoi], list[str]]:
    """One polygon ROI per object and its name: the id zero-padded to `width` digits, so that the ROI
    Manager lists objects in id order."""
    rois, names = [], []
    for object_id, poly in polygons.items():
        name = str(object_id).zfill(width)
        roi = roifile.ImagejRoi.frompoints(np.asarray(poly.exterior.coords)[:-1], name=name)
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)
        names.append(name)
    return rois, names
