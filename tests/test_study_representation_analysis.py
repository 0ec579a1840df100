"""The report's representation analysis reads held-out images as the runs read them: at the run's
working scale, with its normalisation."""

from __future__ import annotations

import numpy as np

from sslseg.config import DataConfig
from sslseg.data.datasets import prepare_image
from sslseg.data.io import read_image
from sslseg.data.layouts import find_samples
from sslseg.data.splits import save_split
from sslseg.data.synth import write_synthetic_dataset
from sslseg.study.representation_analysis import heldout_samples
from sslseg.study.spec import StudyConfig, split_path


def test_heldout_images_use_the_runs_scale_and_normalisation(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_images=5, size=40, seed=4)
    study = StudyConfig.model_validate(
        {
            "output": str(tmp_path / "study"),
            "datasets": [{"name": "d", "train": str(data)}],
            "pretrainings": [{"name": "random", "init": "random"}],
            "label_fractions": [1.0],
        }
    )
    ds = study.datasets[0]
    ids = [s.id for s in find_samples(data)]
    save_split(split_path(study, ds), {"train": ids[:3], "val": ids[3:4], "test": ids[4:]})
    run = DataConfig(train=data, scale=0.5, normalization="percentile")
    samples = heldout_samples(study, ds, 1, run)
    assert [s.id for s in samples] == [ids[4], ids[3]]  # test images first, then validation
    raw = read_image(data / "images" / f"{ids[4]}.tif")
    expected = prepare_image(raw, 1, "percentile", 0.5)
    assert samples[0].image.shape == (1, 20, 20) and samples[0].native_shape == (40, 40)
    np.testing.assert_allclose(samples[0].image, expected, rtol=1e-6)
    assert samples[0].labels is not None and samples[0].labels.shape == (40, 40)  # scored at native size
