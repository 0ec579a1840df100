"""Finding samples (an image and where its label comes from) in the folder layouts users already have,
so that a dataset can be trained on or checked without converting it first.

One module per layout (`pairs`, `dsb`, `monuseg`, `coco`, `unlabeled`), each with its detector, its scan and
its label source; `registry.LAYOUTS` collects them in detection order."""

from sslseg.data.layouts.base import (
    IMAGE_DIR_NAMES,
    LABEL_DIR_NAMES,
    LabelSource,
    Layout,
    LayoutIssue,
    Sample,
    ScanOptions,
)
from sslseg.data.layouts.coco import (
    CocoAnnotations,
    coco_segmentation_to_mask,
    decode_rle_string,
    rle_to_mask,
)
from sslseg.data.layouts.dsb import ObjectMaskFolder
from sslseg.data.layouts.monuseg import MonusegXml
from sslseg.data.layouts.pairs import LabelFile, detect_mask_suffix
from sslseg.data.layouts.registry import (
    LAYOUTS,
    Scan,
    detect_layout,
    find_samples,
    issues_error,
    scan_samples,
)

__all__ = [
    "IMAGE_DIR_NAMES",
    "LABEL_DIR_NAMES",
    "LAYOUTS",
    "CocoAnnotations",
    "LabelFile",
    "LabelSource",
    "Layout",
    "LayoutIssue",
    "MonusegXml",
    "ObjectMaskFolder",
    "Sample",
    "Scan",
    "ScanOptions",
    "coco_segmentation_to_mask",
    "decode_rle_string",
    "detect_layout",
    "detect_mask_suffix",
    "find_samples",
    "issues_error",
    "rle_to_mask",
    "scan_samples",
]
