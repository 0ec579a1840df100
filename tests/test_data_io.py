"""Image and label readers: every format and mode round-trips, every broken file is a DataError."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from sslseg.data.io import IMAGE_EXTENSIONS, read_image, read_label, write_image, write_label
from sslseg.errors import DataError

H, W = 12, 10
RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _smooth_rgb() -> np.ndarray:
    """A gradient, so lossy JPEG stays close to the original."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([y * 20, x * 20, (y + x) * 10], axis=-1).astype(np.uint8)


def test_extensions_listed() -> None:
    assert {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"} <= IMAGE_EXTENSIONS


@pytest.mark.parametrize(
    ("array", "expected_shape"),
    [
        (_u8(H, W), (H, W, 1)),
        (_u8(H, W, 2), (H, W, 2)),  # gray + alpha
        (_u8(H, W, 3), (H, W, 3)),
        (_u8(H, W, 4), (H, W, 4)),
        ((RNG.integers(0, 65536, (H, W))).astype(np.uint16), (H, W, 1)),  # 16-bit gray ('I;16')
    ],
    ids=["gray", "gray_alpha", "rgb", "rgba", "gray16"],
)
def test_png_round_trip(tmp_path: Path, array: np.ndarray, expected_shape: tuple[int, ...]) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    image = read_image(path)
    assert image.shape == expected_shape
    assert image.dtype == array.dtype
    np.testing.assert_array_equal(image.reshape(array.shape), array)


def test_png_rgb16_kept_exact(tmp_path: Path) -> None:
    array = RNG.integers(0, 65536, (H, W, 3)).astype(np.uint16)
    path = tmp_path / "x.png"
    path.write_bytes(imagecodecs.png_encode(array))
    image = read_image(path)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, array)


def test_png_palette_becomes_rgb_and_label_keeps_indices(tmp_path: Path) -> None:
    indices = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
    im = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0]
    im.putpalette(palette + [0] * (768 - len(palette)))
    path = tmp_path / "p.png"
    im.save(path)
    image = read_image(path)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image[indices == 1], [[255, 0, 0]] * int((indices == 1).sum()))
    np.testing.assert_array_equal(read_label(path), indices)


def test_png_one_bit(tmp_path: Path) -> None:
    mask = np.zeros((H, W), bool)
    mask[2:5, 3:7] = True
    path = tmp_path / "b.png"
    Image.fromarray(mask).save(path)
    assert set(np.unique(read_image(path))) == {0, 255}
    np.testing.assert_array_equal(read_label(path), mask.astype(np.uint8))


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
@pytest.mark.parametrize("gray", [False, True])
def test_jpeg(tmp_path: Path, ext: str, gray: bool) -> None:
    array = _smooth_rgb()[:, :, 0] if gray else _smooth_rgb()
    path = tmp_path / f"x{ext}"
    Image.fromarray(array).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (H, W, 1 if gray else 3) and image.dtype == np.uint8
    assert np.abs(image.reshape(array.shape).astype(int) - array).mean() < 6


@pytest.mark.parametrize("array", [_u8(H, W), _u8(H, W, 3)], ids=["gray", "rgb"])
def test_bmp(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "x.bmp"
    Image.fromarray(array).save(path)
    np.testing.assert_array_equal(read_image(path).reshape(array.shape), array)


@pytest.mark.parametrize(
    "array",
    [
        _u8(H, W),
        RNG.integers(0, 65536, (H, W)).astype(np.uint16),
        RNG.random((H, W)).astype(np.float32),
        _u8(H, W, 3),
        RNG.random((H, W, 5)).astype(np.float32),
    ],
    ids=["u8", "u16", "f32", "rgb", "five_channels"],
)
def test_tiff_round_trip_via_write_image(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "x.tif"
    write_image(path, array)
    image = read_image(path)
    assert image.dtype == array.dtype
    assert image.shape == (array.shape if array.ndim == 3 else (*array.shape, 1))
    np.testing.assert_array_equal(image.reshape(array.shape), array)


@pytest.mark.parametrize(
    "writer",
    [
        lambda p, a: tifffile.imwrite(p, a, photometric="minisblack"),  # three pages, no metadata
        lambda p, a: tifffile.imwrite(p, a, photometric="rgb", planarconfig="separate"),
        lambda p, a: tifffile.imwrite(p, a, imagej=True, metadata={"axes": "CYX"}),
    ],
    ids=["pages", "planar_rgb", "imagej_channels"],
)
def test_tiff_channel_first_is_transposed(tmp_path: Path, writer) -> None:
    array = _u8(3, H, W)
    path = tmp_path / "x.tif"
    writer(path, array)
    image = read_image(path)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, np.moveaxis(array, 0, -1))


def test_tiff_stacks_are_refused(tmp_path: Path) -> None:
    zstack = tmp_path / "z.tif"
    tifffile.imwrite(zstack, _u8(4, H, W), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match="z-stack") as info:
        read_image(zstack)
    assert info.value.path == zstack
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, _u8(10, H, W), photometric="minisblack")
    with pytest.raises(DataError, match="only 2-D"):
        read_image(pages)


def test_write_label_round_trip(tmp_path: Path) -> None:
    labels = RNG.integers(0, 300, (H, W)).astype(np.int64)
    write_label(tmp_path / "l.tif", labels)
    out = read_label(tmp_path / "l.tif")
    assert out.ndim == 2 and np.issubdtype(out.dtype, np.integer)
    np.testing.assert_array_equal(out, labels)


def test_label_colour_mask(tmp_path: Path) -> None:
    gray = (RNG.integers(0, 2, (H, W)) * 255).astype(np.uint8)
    same = tmp_path / "same.png"
    Image.fromarray(np.stack([gray] * 3, -1)).save(same)
    np.testing.assert_array_equal(read_label(same), gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)])).save(rgba)
    np.testing.assert_array_equal(read_label(rgba), gray)
    colour = tmp_path / "colour.png"
    Image.fromarray(_u8(H, W, 3)).save(colour)
    with pytest.raises(DataError, match="colour mask") as info:
        read_label(colour)
    assert info.value.path == colour


def test_label_float_values(tmp_path: Path) -> None:
    integral = tmp_path / "i.tif"
    tifffile.imwrite(integral, np.array([[0, 1.0], [2.0, 3.0]], np.float32))
    out = read_label(integral)
    assert np.issubdtype(out.dtype, np.integer)
    np.testing.assert_array_equal(out, [[0, 1], [2, 3]])
    fractional = tmp_path / "f.tif"
    tifffile.imwrite(fractional, np.array([[0, 0.5], [1, 1]], np.float32))
    with pytest.raises(DataError, match="non-integer"):
        read_label(fractional)


def test_label_uint16_instance_map_kept(tmp_path: Path) -> None:
    labels = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = read_label(tmp_path / "l.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


def _valid_png(path: Path) -> bytes:
    Image.fromarray(_u8(64, 64, 3)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_zero_byte_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"empty{ext}"
    path.touch()
    with pytest.raises(DataError, match=r"file is empty \(0 bytes\)") as info:
        read_image(path)
    assert info.value.path == path and "empty" + ext in str(info.value)


def test_truncated_png(tmp_path: Path) -> None:
    data = _valid_png(tmp_path / "ok.png")
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt PNG") as info:
        read_image(path)
    assert "half.png" in str(info.value)
    with pytest.raises(DataError, match="truncated or corrupt PNG"):
        read_label(path)


def test_truncated_tiff_and_jpeg(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ok.tif", _u8(64, 64), compression="zlib")
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt TIFF"):
        read_image(tmp_path / "half.tif")
    Image.fromarray(_u8(64, 64, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt JPEG"):
        read_image(tmp_path / "half.jpg")


def test_garbage_and_missing_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match="corrupt PNG"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="unknown image extension '.gif'"):
        read_image(tmp_path / "x.gif")
    with pytest.raises(DataError, match="folder"):
        read_image(tmp_path)


def test_zarr_folder(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    array = _u8(3, H, W)
    zarr.save_array(str(tmp_path / "x.zarr"), array)
    np.testing.assert_array_equal(read_image(tmp_path / "x.zarr"), np.moveaxis(array, 0, -1))
