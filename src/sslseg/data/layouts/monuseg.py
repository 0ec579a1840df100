"""MoNuSeg: tissue images with Aperio XML polygon annotations of the same stem, beside them or in an
Annotations/ folder; each polygon one instance."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

from sslseg.data.io import read_image
from sslseg.data.layouts.base import (
    Found,
    LabelSource,
    Layout,
    LayoutIssue,
    Sample,
    ScanOptions,
    id_dtype,
    index_by_stem,
    list_images,
    missing_label,
    subdirs,
)
from sslseg.errors import DataError

MONUSEG_IMAGE_DIR_NAMES = ("images", "imgs", "tissue images", "tissue_images")
MONUSEG_XML_DIR_NAMES = ("annotations",)


@dataclass(frozen=True)
class MonusegXml(LabelSource):
    """MoNuSeg / Aperio XML polygons (`Region` > `Vertices` > `Vertex X= Y=`), one instance id per Region."""

    path: Path
    image: Path | None = None  # gives the shape when `load` is called without one

    def polygons(self) -> list[np.ndarray]:
        """Each Region's vertices as an N×2 array of (x, y); regions under 3 vertices are dropped."""
        root = _parse_xml(self.path)
        regions = list(root.iter("Region"))
        if not regions and root.tag != "Annotations":
            raise DataError(self.path, "no Region elements: not a MoNuSeg/Aperio XML annotation file")
        polygons = []
        for region in regions:
            try:
                points = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
            except (KeyError, ValueError):
                rid = region.get("Id", "?")
                raise DataError(self.path, f"Region {rid} has a Vertex without numeric X and Y") from None
            if len(points) >= 3:
                polygons.append(np.asarray(points, dtype=np.float64))
        return polygons

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        if shape is None:
            if self.image is None:
                raise ValueError("MonusegXml.load needs the image shape (or an image path)")
            shape = read_image(self.image).shape[:2]
        polygons = self.polygons()
        labels = np.zeros(tuple(shape), id_dtype(len(polygons) + 1))
        for i, points in enumerate(polygons, start=1):
            # Vertices trace the boundary pixels, so the fill includes them (skimage fills pixel centres).
            rr, cc = draw_polygon(points[:, 1], points[:, 0], shape=labels.shape)
            labels[rr, cc] = i
        return labels


def _parse_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"truncated or corrupt XML: {exc}") from None


def _monuseg_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Images in `root` or its image folders, and XML files beside them or in an Annotations folder."""
    image_dirs = [root] + [p for p in subdirs(root) if p.name.lower() in MONUSEG_IMAGE_DIR_NAMES]
    xml_dirs = image_dirs + [p for p in subdirs(root) if p.name.lower() in MONUSEG_XML_DIR_NAMES]
    images = [p for d in image_dirs for p in list_images(d)]
    xmls = sorted(
        {p for d in xml_dirs for p in d.glob("*.xml") if p.is_file() and not p.name.startswith(".")}
    )
    return images, xmls


def detect(root: Path) -> bool:
    """An image and an XML file of the same stem."""
    images, xmls = _monuseg_files(root)
    return bool({p.stem for p in images} & {p.stem for p in xmls})


def scan(root: Path, options: ScanOptions) -> Found:
    """Pair each image with the XML annotation of its stem."""
    image_files, xml_files = _monuseg_files(root)
    images, issues = index_by_stem(image_files)
    xmls, xml_issues = index_by_stem(xml_files)
    issues += xml_issues
    samples = []
    for stem, image in images.items():
        if stem in xmls:
            samples.append(Sample(stem, image, MonusegXml(xmls[stem], image)))
        else:
            msg = f"image has no annotation {stem}.xml beside it or in Annotations/"
            issues.append(missing_label(stem, image, msg))
    for stem, xml in xmls.items():
        if stem not in images:
            issues.append(
                LayoutIssue(xml, "missing_image", "annotation has no image of the same stem", xml.name)
            )
    return samples, issues


LAYOUT = Layout(
    name="monuseg",
    description="MoNuSeg: images with Aperio XML polygons of the same stem (beside them or in Annotations/)",
    detect=detect,
    scan=scan,
    label=MonusegXml,
)
