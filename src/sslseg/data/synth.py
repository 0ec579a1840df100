"""Synthetic fluorescence nuclei: the built-in default dataset for the demo and the tests.

Each sample is a 16-bit widefield-style image of stained nuclei with its instance label map. It is built
to resemble the fluorescence images of the Data Science Bowl 2018 (DSB) nuclei set: lognormal sizes,
irregular ellipses, touching and slightly overlapping clusters, nuclei cut by the border, chromatin
texture, dim out-of-focus nuclei, uneven illumination, optical blur and Poisson-Gaussian camera noise.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as measure_label
from tqdm import tqdm

from sslseg.atomic import write_text
from sslseg.data.io import write_image, write_label
from sslseg.errors import ConfigError

_HARMONICS = np.arange(2, 6)  # radial harmonics 2..5 make the outline irregular
_MAX_OCCLUSION = 0.2  # a nucleus may lose at most this fraction of its in-image area to overlaps
_ATTEMPTS_PER_NUCLEUS = 40
_MAX_FAILS_IN_A_ROW = 1000  # the image is full: stop early


def generate_sample(
    seed: int,
    size: int | tuple[int, int] = 256,
    *,
    n_nuclei: tuple[int, int] | None = None,
    mean_radius: float = 9.0,
    radius_sigma: float = 0.25,
    coverage: tuple[float, float] = (0.06, 0.25),
    cluster_prob: float = 0.25,
    irregularity: float = 0.045,
    dim_fraction: float = 0.1,
    background: float = 300.0,
    brightness: float = 2500.0,
    psf_sigma: float = 1.2,
    gain: float = 2.0,
    read_noise: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic fluorescence nuclei image (H×W uint16 counts) and its instance labels (uint16, 0 = bg).

    `n_nuclei` is an inclusive (min, max) count; when None the count follows from a foreground `coverage`
    drawn per image. Radii are lognormal around `mean_radius` (px); `brightness` is the typical nucleus
    signal above `background` (counts). The same seed always gives byte-identical arrays.
    """
    h, w = _check_size(size)
    _check_params(n_nuclei, mean_radius, radius_sigma, coverage, cluster_prob, dim_fraction, psf_sigma, gain)
    if background < 0 or brightness < 0 or read_noise < 0:
        raise ConfigError("background, brightness and read_noise must be >= 0")
    rng = np.random.default_rng(seed)

    if n_nuclei is not None:
        target = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))
    else:
        frac = rng.uniform(*coverage)
        target = max(1, round(frac * h * w / (math.pi * mean_radius**2)))

    # Per-image "cell line" style: how textured, rimmed and spotty these nuclei are.
    style = {
        "texture": rng.uniform(0.05, 0.22),
        "rim": rng.uniform(0.0, 0.35),
        "spots": rng.uniform(0.0, 4.0),
        "haze": rng.uniform(0.0, 0.12),
    }
    nuclei = _place_nuclei(rng, h, w, target, mean_radius, radius_sigma, cluster_prob, irregularity)
    if n_nuclei is not None and len(nuclei.ids) < n_nuclei[0]:
        raise ConfigError(
            f"cannot fit {n_nuclei[0]} nuclei of radius {mean_radius} into {h}x{w} without heavy overlap; "
            "lower n_nuclei or mean_radius"
        )
    labels = _finalise_labels(nuclei.owner)
    image = _render(rng, labels, nuclei, style, h, w, mean_radius, dim_fraction, psf_sigma, brightness)
    image = _camera(rng, image, h, w, background, gain, read_noise)
    return image, labels


def write_synthetic_dataset(
    out_dir: str | Path, n_images: int = 64, size: int | tuple[int, int] = 256, seed: int = 0, **kw: Any
) -> Path:
    """Write `n_images` synthetic samples as out_dir/images/synth_0000.tif and out_dir/labels/synth_0000.tif.

    Sample i depends only on (seed, i, kw), so a larger set extends a smaller one without changing it.
    """
    if n_images < 1:
        raise ConfigError(f"n_images must be at least 1, got {n_images}")
    out = Path(out_dir)
    params = {
        name: p.default
        for name, p in inspect.signature(generate_sample).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = set(kw) - set(params)
    if unknown:
        raise ConfigError(f"unknown synthetic-data parameter(s): {', '.join(sorted(unknown))}")
    params.update(kw)

    for i in tqdm(range(n_images), desc="synthetic nuclei", unit="img", disable=n_images < 100):
        image, labels = generate_sample(sample_seed(seed, i), size, **kw)
        write_image(out / "images" / f"synth_{i:04d}.tif", image)
        write_label(out / "labels" / f"synth_{i:04d}.tif", labels)
    # Drop samples left by an earlier, larger run so the folder holds exactly this set.
    for sub in ("images", "labels"):
        for stale in (out / sub).glob("synth_*.tif"):
            suffix = stale.stem.removeprefix("synth_")
            if suffix.isdigit() and int(suffix) >= n_images:
                stale.unlink()

    lines = [
        "# Synthetic fluorescence nuclei",
        "",
        "Generated by `sslseg.data.synth.write_synthetic_dataset`: 16-bit widefield-style images of",
        "stained nuclei (`images/`) with instance labels (`labels/`, 0 = background, 1..N = nuclei).",
        "Sample i is `generate_sample(sample_seed(seed, i), size, **params)`.",
        "",
        f"- n_images: {n_images}",
        f"- size: {size}",
        f"- seed: {seed}",
        *(f"- {k}: {v}" for k, v in params.items()),
        "",
    ]
    write_text(out / "README.md", "\n".join(lines))
    return out


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` in a dataset with base `seed` (independent streams, no collisions)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


class _Nuclei:
    """Shape parameters of placed nuclei plus the running ownership map while placing them."""

    def __init__(self, h: int, w: int) -> None:
        self.owner = np.zeros((h, w), np.int32)  # 1-based index of the nucleus owning each pixel
        self.best_f = np.full((h, w), np.inf)  # normalised radius of the owner at each pixel
        self.ids: list[int] = []
        self.cy: list[float] = []
        self.cx: list[float] = []
        self.r: list[float] = []
        self.axes: list[tuple[float, float, float]] = []  # semi-axes and orientation
        self.inside_area: list[int] = []  # in-image area of the full shape
        self.shapes: list[tuple[slice, slice, np.ndarray]] = []  # bbox and normalised radius map


def _place_nuclei(
    rng: np.random.Generator,
    h: int,
    w: int,
    target: int,
    mean_radius: float,
    radius_sigma: float,
    cluster_prob: float,
    irregularity: float,
) -> _Nuclei:
    """Drop nuclei one by one (uniformly or beside an existing one) while keeping overlaps small."""
    nuc = _Nuclei(h, w)
    owned = np.zeros(target + 1, np.int64)  # pixels owned per nucleus (index 0 unused)
    last_success = 0
    for attempt in range(target * _ATTEMPTS_PER_NUCLEUS):
        if len(nuc.ids) >= target or attempt - last_success > _MAX_FAILS_IN_A_ROW:
            break
        r = mean_radius * math.exp(radius_sigma * rng.standard_normal() - radius_sigma**2 / 2)
        r = float(np.clip(r, 0.4 * mean_radius, 2.5 * mean_radius))
        aspect = rng.uniform(0.55, 0.98)
        a, b = r / math.sqrt(aspect), r * math.sqrt(aspect)
        coef = rng.normal(0.0, irregularity, _HARMONICS.size) / np.sqrt(_HARMONICS / 2)
        phase = rng.uniform(0, 2 * math.pi, _HARMONICS.size)
        alpha = rng.uniform(0, math.pi)
        beside = bool(nuc.ids) and rng.random() < cluster_prob
        if beside:
            # Beside nucleus j: centre distance = sum of both ellipse radii along the line, give or take.
            j = int(rng.integers(len(nuc.ids)))
            ang = rng.uniform(0, 2 * math.pi)
            aj, bj, alj = nuc.axes[j]
            contact = _ellipse_radius(a, b, alpha, ang) + _ellipse_radius(aj, bj, alj, ang)
            dist = contact * rng.uniform(0.9, 1.06)
            cy, cx = nuc.cy[j] + dist * math.sin(ang), nuc.cx[j] + dist * math.cos(ang)
        else:
            cy, cx = rng.uniform(-0.4 * r, h - 1 + 0.4 * r), rng.uniform(-0.4 * r, w - 1 + 0.4 * r)

        reach = a * (1 + np.abs(coef).sum()) + 1
        y0, y1 = max(0, math.floor(cy - reach)), min(h, math.ceil(cy + reach) + 1)
        x0, x1 = max(0, math.floor(cx - reach)), min(w, math.ceil(cx + reach) + 1)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        u = (dx * math.cos(alpha) + dy * math.sin(alpha)) / a
        v = (-dx * math.sin(alpha) + dy * math.cos(alpha)) / b
        theta = np.arctan2(v, u)
        wobble = coef[:, None, None] * np.cos(_HARMONICS[:, None, None] * theta + phase[:, None, None])
        f = np.hypot(u, v) / (1 + wobble.sum(0)).clip(0.5)

        inside = f < 1
        area_in = int(inside.sum())
        if area_in < max(8, 0.2 * math.pi * r * r):
            continue  # mostly outside the image
        sl = (slice(y0, y1), slice(x0, x1))
        if not beside and np.any(nuc.owner[sl][f < 1.15]):
            continue  # free-standing nuclei keep a small gap, as spread cells do
        wins = inside & (f < nuc.best_f[sl])
        if wins.sum() < (1 - _MAX_OCCLUSION) * area_in:
            continue
        stolen = np.bincount(nuc.owner[sl][wins], minlength=len(owned))
        stolen[0] = 0
        k = len(nuc.ids)
        if np.any(owned[1 : k + 1] - stolen[1 : k + 1] < (1 - _MAX_OCCLUSION) * np.array(nuc.inside_area)):
            continue
        owned -= stolen
        owned[k + 1] = int(wins.sum())
        nuc.owner[sl][wins] = k + 1
        nuc.best_f[sl][wins] = f[wins]
        nuc.ids.append(k + 1)
        nuc.cy.append(cy)
        nuc.cx.append(cx)
        nuc.r.append(r)
        nuc.axes.append((a, b, alpha))
        nuc.inside_area.append(area_in)
        nuc.shapes.append((sl[0], sl[1], f))
        last_success = attempt
    return nuc


def _ellipse_radius(a: float, b: float, alpha: float, direction: float) -> float:
    """Distance from the centre to the edge of an (a, b) ellipse rotated by alpha, along `direction`."""
    t = direction - alpha
    return 1 / math.hypot(math.cos(t) / a, math.sin(t) / b)


def _finalise_labels(owner: np.ndarray) -> np.ndarray:
    """Keep each nucleus's largest connected piece and number them 1..N in placement order."""
    labels = owner.copy()
    # 4-connected pieces of equal id, numbered in raster order; per id the largest (the first of equals) stays
    comp = measure_label(owner, background=0, connectivity=1)
    n_comp = int(comp.max())
    if n_comp > np.count_nonzero(np.bincount(owner.ravel())[1:]):  # some nucleus is in pieces
        sizes = np.bincount(comp.ravel(), minlength=n_comp + 1)
        comp_id = np.zeros(n_comp + 1, np.int64)
        comp_id[comp.ravel()] = owner.ravel()
        pieces = np.arange(1, n_comp + 1)
        order = pieces[np.lexsort((pieces, -sizes[1:], comp_id[1:]))]  # by id, then largest, then first
        first = np.r_[True, comp_id[order][1:] != comp_id[order][:-1]]
        keep = np.zeros(n_comp + 1, bool)
        keep[order[first]] = True
        labels[~keep[comp]] = 0
    present = np.unique(labels)
    if present.size > 2**16:
        raise ConfigError(f"{present.size - 1} nuclei do not fit uint16 labels; use a smaller image")
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    lut[present] = np.arange(present.size, dtype=np.uint16)  # present[0] is 0: background stays 0
    return lut[labels]


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    nuc: _Nuclei,
    style: dict[str, float],
    h: int,
    w: int,
    mean_radius: float,
    dim_fraction: float,
    psf_sigma: float,
    brightness: float,
) -> np.ndarray:
    """Noise-free signal above background: nuclei with texture, rims and spots, blurred by the optics."""
    n = len(nuc.ids)
    bright = np.exp(rng.normal(0.0, 0.22, n) - 0.22**2 / 2)  # per-nucleus DNA content/staining
    dim = rng.random(n) < dim_fraction
    bright[dim] *= rng.uniform(0.2, 0.5, int(dim.sum()))
    rim = style["rim"] * rng.uniform(0.5, 1.5, n)

    # Chromatin: smooth noise at two scales, shared by all nuclei, modulating each one's brightness.
    chrom = ndi.gaussian_filter(rng.standard_normal((h, w)), 1.0) * 2.0
    chrom += ndi.gaussian_filter(rng.standard_normal((h, w)), 2.2) * 4.0
    chrom = (1 + style["texture"] * chrom).clip(0.2)

    focus = np.zeros((h, w))
    blurred = np.zeros((h, w))
    for k, (sy, sx, f) in enumerate(nuc.shapes):
        inside = f < 1
        fi = f[inside]  # outside the shape the profile adds nothing: only the pixels inside are computed
        # Thickness of a flattened ellipsoid (dimmer towards the edge), plus a brighter periphery
        # where heterochromatin lines the envelope.
        prof = (1 - fi**2) ** 0.35 + rim[k] * np.exp(-(((1 - fi) / 0.15) ** 2))
        (blurred if dim[k] else focus)[sy, sx][inside] += bright[k] * prof  # overlaps add up (widefield)
    focus *= chrom
    blurred *= chrom
    psf = psf_sigma * rng.uniform(0.8, 1.3)
    signal = ndi.gaussian_filter(focus, psf)

    # Chromocentres: a few bright blobs inside in-focus nuclei.
    r = np.array(nuc.r)
    n_spots = rng.poisson(style["spots"] * r**2 / mean_radius**2) * ~dim
    if n_spots.sum():
        which = np.repeat(np.arange(n), n_spots)
        rad = r[which] * 0.7 * np.sqrt(rng.random(which.size))
        ang = rng.uniform(0, 2 * math.pi, which.size)
        ys = np.round(np.array(nuc.cy)[which] + rad * np.sin(ang)).astype(int)
        xs = np.round(np.array(nuc.cx)[which] + rad * np.cos(ang)).astype(int)
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        spots = np.zeros((h, w))
        np.add.at(spots, (ys[ok], xs[ok]), bright[which[ok]] * rng.uniform(6.0, 18.0, int(ok.sum())))
        signal += ndi.gaussian_filter(spots, math.hypot(1.2, psf))
    signal += ndi.gaussian_filter(blurred, psf * rng.uniform(2.0, 3.5))
    # Faint cytoplasmic haze around nuclei, as autofluorescence and unbound dye give in real images.
    if style["haze"] > 0:
        mask = (labels > 0).astype(float)
        signal += style["haze"] * ndi.gaussian_filter(mask, 1.5 * mean_radius, truncate=2.5)
    return signal * brightness


def _camera(
    rng: np.random.Generator,
    signal: np.ndarray,
    h: int,
    w: int,
    background: float,
    gain: float,
    read_noise: float,
) -> np.ndarray:
    """Uneven illumination and background, then Poisson shot noise and Gaussian read noise, as uint16."""
    yy = (np.arange(h)[:, None] - (h - 1) / 2) / max(h, w)
    xx = (np.arange(w)[None, :] - (w - 1) / 2) / max(h, w)
    # Vignetting about an off-centre optical axis plus a linear tilt.
    oy, ox = rng.uniform(-0.3, 0.3, 2)
    illum = 1 - rng.uniform(0.05, 0.4) * ((yy - oy) ** 2 + (xx - ox) ** 2) / 0.5
    illum += rng.uniform(-0.15, 0.15) * yy + rng.uniform(-0.15, 0.15) * xx
    # Background: autofluorescence/offset with a few low-frequency undulations.
    bg = np.ones((h, w))
    for _ in range(3):
        fy, fx = rng.uniform(0.2, 1.5, 2) * 2 * math.pi
        bg += rng.uniform(0.0, 0.05) * np.cos(fy * yy + fx * xx + rng.uniform(0, 2 * math.pi))
    expected = (signal + background * bg) * illum.clip(0.3)
    counts = gain * rng.poisson(expected.clip(0) / gain) + rng.normal(0.0, read_noise, (h, w))
    return np.rint(counts).clip(0, 65535).astype(np.uint16)


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(hw) != 2 or any(int(s) != s or s < 16 for s in hw):
        raise ConfigError(f"size must be an int or (height, width) of at least 16 pixels, got {size!r}")
    return int(hw[0]), int(hw[1])


def _check_params(
    n_nuclei: tuple[int, int] | None,
    mean_radius: float,
    radius_sigma: float,
    coverage: tuple[float, float],
    cluster_prob: float,
    dim_fraction: float,
    psf_sigma: float,
    gain: float,
) -> None:
    if n_nuclei is not None and not (len(n_nuclei) == 2 and 0 <= n_nuclei[0] <= n_nuclei[1]):
        raise ConfigError(f"n_nuclei must be (min, max) with 0 <= min <= max, got {n_nuclei!r}")
    if not 1.5 <= mean_radius <= 200:
        raise ConfigError(f"mean_radius must be between 1.5 and 200 pixels, got {mean_radius}")
    if radius_sigma < 0 or psf_sigma <= 0 or gain <= 0:
        raise ConfigError("radius_sigma must be >= 0 and psf_sigma, gain > 0")
    if not (len(coverage) == 2 and 0 < coverage[0] <= coverage[1] < 1):
        raise ConfigError(f"coverage must be (min, max) fractions in (0, 1), got {coverage!r}")
    if not (0 <= cluster_prob <= 1 and 0 <= dim_fraction <= 1):
        raise ConfigError("cluster_prob and dim_fraction must lie in [0, 1]")
