"""Images larger than memory: block-wise segmentation stitched across block borders, lazy reading of TIFF
levels and OME-Zarr, pixel sizes written into outputs, and `--part` sharding.

The stitching tests use a one-pixel network (a 1×1 convolution) whose probabilities follow the image, so
that whole-image and block-wise passes can be compared without training."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from sslseg.config import FinetuneConfig
from sslseg.data.io import pixel_size_options, read_pixel_size, write_label, write_label_tiles
from sslseg.data.lazy import open_image, write_ome_zarr_labels
from sslseg.errors import ConfigError, DataError
from sslseg.predict import parse_part, shard
from sslseg.segmentation.blocks import BlockReport, segment_blocks, whole_image_stats
from sslseg.segmentation.inference import predict_probabilities, probabilities_to_labels

BLOCK = 64


def _blobs(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 16-bit image of Gaussian nuclei (σ 3.5 px) on a dark background, centres at least 14 px apart,
    with nuclei placed on the block borders on purpose; returns the image and the centres."""
    rng = np.random.default_rng(seed)
    h, w = shape
    centres = [(BLOCK - 1, 40), (100, BLOCK + 1), (BLOCK, 2 * BLOCK - 2)]  # cut by a border
    while len(centres) < 40:
        c = (int(rng.integers(6, h - 6)), int(rng.integers(6, w - 6)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= 14**2 for a, b in centres):
            centres.append(c)
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros(shape)
    for cy, cx in centres:
        image = np.maximum(image, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.5**2)))
    return (100 + 3000 * image).astype(np.uint16), centres


def _pixel_net(raw: np.ndarray) -> nn.Module:
    """Foreground where the image is above 30 % of a nucleus' peak, distance rising to 1 at its centre."""
    stats = whole_image_stats(raw[:, :, None], 1, "per_image", False)
    level = (np.array([100 + 0.3 * 3000, 100 + 0.7 * 3000]) - stats.center[0]) / stats.spread[0]
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = 40.0
        conv.bias[:] = torch.tensor(-40.0 * level, dtype=torch.float32)
    return nn.Sequential(conv).eval()


def _cfg(tta: bool = False) -> FinetuneConfig:
    return FinetuneConfig.model_validate(
        {
            "data": {"task": "instance"},
            "model": {"instance_head": "distance"},  # what _pixel_net predicts
            "inference": {"tile_size": 32, "overlap": 0.25, "batch_size": 3, "tta": tta},
            "postprocess": {"min_size": 4},
        }
    )


def _same_up_to_relabelling(a: np.ndarray, b: np.ndarray) -> None:
    """Equal label maps but for the numbering: the pairs of ids are a one-to-one map, background to itself."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("tta", [False, True])
def test_blockwise_labels_equal_whole_image_labels_across_block_borders(tmp_path, tta):
    raw, centres = _blobs((200, 180))
    tifffile.imwrite(tmp_path / "big.tif", raw, tile=(32, 32), compression="zlib")
    net, cfg = _pixel_net(raw), _cfg(tta)
    stats = whole_image_stats(raw[:, :, None], 1, "per_image", False)
    image = stats.apply(raw[:, :, None], 1)
    probs = predict_probabilities(net, image, "instance", raw.shape, cfg.inference)
    whole = probabilities_to_labels(probs, "instance", cfg.postprocess, cfg.model.instance_head)
    report = BlockReport()
    with open_image(tmp_path / "big.tif") as source:
        bands = list(segment_blocks(net, source, cfg, block=BLOCK, band_rows=16, halo=20, report=report))
    assert [y for y, _ in bands] == sorted(y for y, _ in bands) and all(y % 16 == 0 for y, _ in bands)
    blocks = np.concatenate([b for _, b in bands])
    assert blocks.shape == raw.shape and report.blocks == 4 * 3
    assert report.settings is not None and report.settings.halo == 20 and report.cut_objects == 0
    _same_up_to_relabelling(whole, blocks.astype(np.int64))
    assert report.objects == whole.max() == blocks.max() == len(centres)
    assert sorted(np.unique(blocks[blocks > 0])) == list(range(1, len(centres) + 1))  # ids 1..N, each once
    # the nuclei placed on block borders are one object each, spanning both blocks
    for cy, cx in centres[:3]:
        obj = blocks == blocks[cy, cx]
        rows, cols = np.nonzero(obj)
        assert rows.min() < cy - 3 and rows.max() > cy + 3 and cols.min() < cx - 3 and cols.max() > cx + 3
        spans = {(r // BLOCK, c // BLOCK) for r, c in zip(rows, cols, strict=True)}
        assert len(spans) >= 2


class _CountingNet(nn.Module):
    """A network that counts the tiles it is given (batch items), around another."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("window", [96, 2048])  # a part of the image, or all of it
def test_each_network_tile_is_evaluated_once_sample_window_included(tmp_path, monkeypatch, window):
    from sslseg.segmentation import blocks as blocks_module
    from sslseg.segmentation.tiling import tile_grid

    monkeypatch.setattr(blocks_module, "SAMPLE_WINDOW", window)
    raw, centres = _blobs((200, 180))
    tifffile.imwrite(tmp_path / "big.tif", raw, tile=(32, 32), compression="zlib")
    net, cfg = _CountingNet(_pixel_net(raw)), _cfg()
    stats = whole_image_stats(raw[:, :, None], 1, "per_image", False)
    probs = predict_probabilities(
        net.inner, stats.apply(raw[:, :, None], 1), "instance", raw.shape, cfg.inference
    )
    whole = probabilities_to_labels(probs, "instance", cfg.postprocess, cfg.model.instance_head)
    with open_image(tmp_path / "big.tif") as source:
        blocks = np.concatenate([b for _, b in segment_blocks(net, source, cfg, block=BLOCK, band_rows=16)])
    assert net.tiles == len(tile_grid(*raw.shape, cfg.inference.tile_size, cfg.inference.overlap)[1])
    _same_up_to_relabelling(whole, blocks.astype(np.int64))


def test_semantic_blocks_equal_the_whole_image_argmax(tmp_path):
    raw, _ = _blobs((150, 140), seed=1)
    tifffile.imwrite(tmp_path / "big.tif", raw)
    net = _pixel_net(raw)
    cfg = _cfg().model_copy(update={"data": _cfg().data.model_copy(update={"task": "semantic"})})
    stats = whole_image_stats(raw[:, :, None], 1, "per_image", False)
    probs = predict_probabilities(net, stats.apply(raw[:, :, None], 1), "semantic", raw.shape, cfg.inference)
    whole = probabilities_to_labels(probs, "semantic")
    with open_image(tmp_path / "big.tif") as source:
        blocks = np.concatenate([b for _, b in segment_blocks(net, source, cfg, block=BLOCK, band_rows=8)])
    np.testing.assert_array_equal(blocks, whole)


# --- lazy inputs --------------------------------------------------------------------------------------


def _pyramid(path, image: np.ndarray) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tw.write(image, subifds=1, tile=(32, 32), compression="zlib", metadata=meta)
        tw.write(image[::2, ::2], subfiletype=1, tile=(32, 32), compression="zlib")


def test_pyramidal_ome_tiff_levels_and_a_clear_error_for_a_missing_level_or_series(tmp_path):
    image = np.random.default_rng(0).integers(0, 4000, (120, 100), dtype=np.uint16)
    _pyramid(tmp_path / "pyr.ome.tif", image)
    with open_image(tmp_path / "pyr.ome.tif") as full:
        assert full.shape == (120, 100, 1) and full.lazy and full.pixel_size == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(full.read(10, 50, 20, 90)[..., 0], image[10:50, 20:90])
    with open_image(tmp_path / "pyr.ome.tif", level=1) as half:
        assert half.shape == (60, 50, 1) and half.pixel_size == pytest.approx((1.0, 1.0))
        np.testing.assert_array_equal(half.read_all()[..., 0], image[::2, ::2])
    with pytest.raises(
        DataError, match=r"pyr.ome.tif.*has no level 2; its levels are 0 \(120×100\), 1 \(60×50\)"
    ):
        open_image(tmp_path / "pyr.ome.tif", level=2)
    with pytest.raises(DataError, match=r"has no series 1; its series are 0"):
        open_image(tmp_path / "pyr.ome.tif", series=1)


def test_ome_zarr_input_is_read_lazily_with_its_pixel_size_and_levels(tmp_path):
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(1).integers(0, 255, (2, 90, 70), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=image.shape, chunks=(1, 32, 32), dtype=np.uint8)[...] = image
    group.create_array("1", shape=(2, 45, 35), chunks=(1, 32, 32), dtype=np.uint8)[...] = image[:, ::2, ::2]
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "yx"
    ]
    scales = [[1.0, 0.25, 0.25], [1.0, 0.5, 0.5]]
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": s}]}
        for k, s in enumerate(scales)
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    with open_image(tmp_path / "img.zarr") as source:
        assert (
            source.shape == (90, 70, 2) and source.lazy and source.pixel_size == pytest.approx((0.25, 0.25))
        )
        np.testing.assert_array_equal(source.read(5, 40, 10, 60), image[:, 5:40, 10:60].transpose(1, 2, 0))
    with open_image(tmp_path / "img.zarr", level=1) as half:
        assert half.shape == (45, 35, 2) and half.pixel_size == pytest.approx((0.5, 0.5))
    with pytest.raises(DataError, match=r"img.zarr.*has no level 2; its levels are 0 \(90×70\), 1 \(45×35\)"):
        open_image(tmp_path / "img.zarr", level=2)


# --- pixel size written -------------------------------------------------------------------------------


def test_pixel_size_is_written_into_every_kind_of_label_file(tmp_path):
    labels = np.arange(40 * 30, dtype=np.int64).reshape(40, 30) % 500
    write_label(tmp_path / "ij.tif", labels, (0.5, 0.25))  # 16-bit: ImageJ metadata
    write_label(tmp_path / "ome.tif", labels * 1000, (0.5, 0.25))  # 32-bit: OME-XML and resolution tags
    bands = [
        (0, labels[:16].astype(np.uint32)),
        (16, labels[16:32].astype(np.uint32)),
        (32, labels[32:].astype(np.uint32)),
    ]
    write_label_tiles(tmp_path / "tiled.tif", labels.shape, bands, (0.5, 0.25), tile=16)
    write_label(tmp_path / "none.tif", labels)
    with tifffile.TiffFile(tmp_path / "ij.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "micron"
    for name in ("ome.tif", "tiled.tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_ome and 'PhysicalSizeX="0.25"' in tif.ome_metadata
            page = tif.pages[0]
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.resolution == pytest.approx((1e4 / 0.25, 1e4 / 0.5))
            assert page.is_tiled == (name == "tiled.tif")
        assert read_pixel_size(tmp_path / name) == pytest.approx((0.5, 0.25))
    assert read_pixel_size(tmp_path / "ij.tif") == pytest.approx((0.5, 0.25))
    assert read_pixel_size(tmp_path / "none.tif") is None
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "tiled.tif"), labels)
    with pytest.raises(ValueError, match="positive"):
        pixel_size_options((0.0, 1.0), np.dtype(np.uint16), tiled=False)


def test_ome_zarr_labels_carry_the_pixel_size(tmp_path):
    pytest.importorskip("zarr")
    array = write_ome_zarr_labels(tmp_path / "l.zarr", (40, 30), (0.3, 0.3), 16)
    array[:16] = 5
    with open_image(tmp_path / "l.zarr") as source:
        assert source.pixel_size == pytest.approx((0.3, 0.3)) and source.read(0, 2, 0, 2).max() == 5


# --- sharding -----------------------------------------------------------------------------------------


def test_part_shards_the_sorted_file_list_once_and_checks_its_argument(tmp_path):
    from pathlib import Path

    jobs = [(Path(f"{n}.tif"), n) for n in "gfedcba"]
    shares = [shard(jobs, parse_part(f"{i}/3")) for i in (1, 2, 3)]
    assert [[n for _, n in s] for s in shares] == [["a", "b"], ["c", "d"], ["e", "f", "g"]]
    assert shard(jobs, parse_part("1/1")) == sorted(jobs, key=lambda j: j[1])
    assert shard(jobs, None) == jobs
    # more shares than files: some are empty, each file still in one
    assert [[n for _, n in shard(jobs[:2], parse_part(f"{i}/4"))] for i in (1, 2, 3, 4)] == [
        [],
        ["f"],
        [],
        ["g"],
    ]
    for bad in ("0/3", "4/3", "a/b", "3", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="--part"):
            parse_part(bad)
