"""The synthetic nuclei generator: deterministic, well-formed labels, realistic statistics, file output."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from sslseg.data.synth import generate_sample, sample_seed, write_synthetic_dataset
from sslseg.errors import ConfigError


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_sample(seed, 128) for seed in range(12)]


def _touching_ids(labels: np.ndarray) -> set[int]:
    """Ids that share a 4-neighbour edge with a different nucleus."""
    ids: set[int] = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        contact = (a != b) & (a > 0) & (b > 0)
        ids |= set(a[contact].tolist()) | set(b[contact].tolist())
    return ids


def test_same_seed_same_bytes_different_seed_differs() -> None:
    im1, lab1 = generate_sample(7, 96)
    im2, lab2 = generate_sample(7, 96)
    assert im1.tobytes() == im2.tobytes() and lab1.tobytes() == lab2.tobytes()
    im3, lab3 = generate_sample(8, 96)
    assert im1.tobytes() != im3.tobytes() and lab1.tobytes() != lab3.tobytes()


def test_labels_are_consecutive_nonempty_instances(samples) -> None:
    for _, labels in samples:
        assert labels.dtype == np.uint16
        n = int(labels.max())
        assert n >= 1
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        assert np.all(counts[1:] > 0), "every id 1..N must own pixels"
        assert counts[0] > 0, "there is background"


def test_clusters_touch_and_border_cuts(samples) -> None:
    touching = [len(_touching_ids(lab)) / lab.max() for _, lab in samples]
    assert np.mean([t > 0 for t in touching]) >= 0.6, "most samples have touching nuclei"
    assert 0.05 < np.mean(touching) < 0.8
    cut = [np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).size - 1 for _, lab in samples]
    assert np.mean([c > 0 for c in cut]) >= 0.6, "nuclei cut by the border are common"


def test_image_is_noisy_uint16_with_bright_nuclei(samples) -> None:
    for image, labels in samples:
        assert image.dtype == np.uint16 and image.shape == labels.shape
        fg, bg = image[labels > 0].astype(float), image[labels == 0].astype(float)
        assert fg.mean() > 3 * bg.mean()
        assert 50 < np.median(bg) < 2000 and fg.mean() > 500
        # Noise: neighbouring background pixels differ almost everywhere (not piecewise constant).
        diff = np.diff(image.astype(np.int64), axis=1)[(labels[:, 1:] == 0) & (labels[:, :-1] == 0)]
        assert np.mean(diff != 0) > 0.8


def test_nucleus_intensities_and_sizes_vary(samples) -> None:
    image, labels = max(samples, key=lambda s: s[1].max())
    ids = np.arange(1, int(labels.max()) + 1)
    areas = np.bincount(labels.ravel())[1:]
    means = np.bincount(labels.ravel(), weights=image.ravel().astype(float))[1:] / areas
    assert ids.size >= 10
    assert np.std(means) / np.mean(means) > 0.1
    interior = areas[areas > 30]  # border-cut nuclei aside, sizes still spread
    assert np.std(np.log(interior)) > 0.2


def test_sizes_respected_including_non_square() -> None:
    image, labels = generate_sample(3, (80, 144))
    assert image.shape == labels.shape == (80, 144)
    image, labels = generate_sample(3, 64)
    assert image.shape == (64, 64)
    with pytest.raises(ConfigError):
        generate_sample(0, (8, 64))


def test_n_nuclei_and_radius_respected() -> None:
    for seed in range(4):
        _, labels = generate_sample(seed, 128, n_nuclei=(5, 12))
        assert 5 <= labels.max() <= 12
    _, labels = generate_sample(0, 128, n_nuclei=(9, 9))
    assert labels.max() == 9
    _, small = generate_sample(1, 128, n_nuclei=(20, 20), mean_radius=4.0)
    _, large = generate_sample(1, 128, n_nuclei=(20, 20), mean_radius=10.0)
    assert (small > 0).sum() < (large > 0).sum() / 3
    _, empty = generate_sample(0, 64, n_nuclei=(0, 0))
    assert empty.max() == 0
    with pytest.raises(ConfigError):
        generate_sample(0, 64, n_nuclei=(400, 400), mean_radius=12.0)


def test_write_synthetic_dataset(tmp_path) -> None:
    out = write_synthetic_dataset(tmp_path / "synth", n_images=3, size=64, seed=5, dim_fraction=0.0)
    assert out == tmp_path / "synth"
    images = sorted(p.name for p in (out / "images").glob("*.tif"))
    assert images == ["synth_0000.tif", "synth_0001.tif", "synth_0002.tif"]
    assert sorted(p.name for p in (out / "labels").glob("*.tif")) == images
    for i, name in enumerate(images):
        image, labels = tifffile.imread(out / "images" / name), tifffile.imread(out / "labels" / name)
        expected = generate_sample(sample_seed(5, i), 64, dim_fraction=0.0)
        assert np.array_equal(image, expected[0]) and np.array_equal(labels, expected[1])
    readme = (out / "README.md").read_text()
    assert "seed: 5" in readme and "dim_fraction: 0.0" in readme

    # A larger set extends the smaller one unchanged; a smaller rerun drops the extra samples.
    first = tifffile.imread(out / "images" / "synth_0001.tif")
    write_synthetic_dataset(out, n_images=4, size=64, seed=5, dim_fraction=0.0)
    assert np.array_equal(tifffile.imread(out / "images" / "synth_0001.tif"), first)
    write_synthetic_dataset(out, n_images=2, size=64, seed=5, dim_fraction=0.0)
    assert len(list((out / "images").glob("*.tif"))) == len(list((out / "labels").glob("*.tif"))) == 2
    with pytest.raises(ConfigError):
        write_synthetic_dataset(out, n_images=1, bogus=1)


def test_sample_seeds_are_distinct() -> None:
    seeds = {sample_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300
