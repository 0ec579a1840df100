"""benchmarks/large_image.py's crop check compares the crop's whole-image prediction with the block-wise map
only where both passes blend the same network tiles: there the probabilities must agree, and the region it
names must be neither empty nor wider than that (outside it a zero-padded network sees other context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import benchmark_module
from torch import nn

from sslseg.segmentation.tiling import sliding_window


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("large_image")


def test_crop_origin_lies_on_the_tile_stride(bench) -> None:
    assert bench.crop_origin(20000, 4096, 512, 0.25) == 7680  # centred would be 7952; the stride is 384
    assert bench.crop_origin(3000, 2048, 512, 0.25) % 384 == 0
    assert bench.crop_origin(4096, 4096, 512, 0.25) == 0


def test_probabilities_agree_exactly_where_the_tiles_are_the_same(bench) -> None:
    torch.manual_seed(0)
    # zero padding at tile edges makes the output depend on where the tiles fall, as in a real U-Net
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.Tanh(), nn.Conv2d(4, 1, 5, padding=2))
    size, crop, tile, overlap = 300, 160, 64, 0.25
    image = torch.randn(1, size, size)
    whole = sliding_window(net, image, tile, overlap)[0]
    origin = bench.crop_origin(size, crop, tile, overlap)
    part = sliding_window(net, image[:, origin : origin + crop, origin : origin + crop], tile, overlap)[0]
    reference = whole[origin : origin + crop, origin : origin + crop]
    along = bench.same_tiles(size, origin, crop, tile, overlap)
    same = torch.from_numpy(along[:, None] & along[None, :])
    assert 0.5 < same.float().mean() < 1.0
    torch.testing.assert_close(part[same], reference[same], rtol=0, atol=1e-5)
    assert (part[~same] - reference[~same]).abs().max() > 1e-3  # the excluded band does differ


def test_compare_leaves_out_whole_components_that_reach_outside_the_compared_region(bench) -> None:
    whole = np.zeros((20, 20), np.int64)
    whole[2:5, 2:5] = 1  # inside
    whole[10:14, 15:19] = 2  # reaches the excluded columns
    whole[10:14, 11:15] = 3  # inside, but touches 2: the watershed split them by seeds outside
    blocks = np.where(whole > 0, whole + 10, 0)
    blocks[10:14, 14] = 12  # the split between 2 and 3 moved: not compared
    blocks[11, 17] = 0  # differs only where it is not compared
    same = np.ones((20, 20), bool)
    same[:, 16:] = False
    scores = bench.compare(whole, blocks, same)
    assert scores["objects_whole"] == scores["objects_blocks"] == 1
    assert scores["iou_min"] == 1.0 and scores["one_to_one"]
    blocks[3, 3] = 0  # a compared object that differs is caught
    assert bench.compare(whole, blocks, same)["iou_min"] < 1.0


def test_the_compared_region_narrows_by_the_smoothing_reach(bench) -> None:
    same = np.array([0, 1, 1, 1, 1, 1, 1, 0], bool)
    assert bench.narrowed(same, 2).tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert bench.narrowed(np.ones(4, bool), 2).all()  # the crop's own edge is not narrowed
    assert bench.narrowed(same, 0).tolist() == same.tolist()
