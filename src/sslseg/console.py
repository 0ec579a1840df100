"""What the terminal shows: sslseg's own progress, not the notices of the libraries it drives. Kept free of
heavy imports so the command line starts fast."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Silence chatty third-party notices; the command line and each study worker process call this once."""
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")
    # a budget too small to spare validation images trains a fixed schedule: no validation loop is meant
    warnings.filterwarnings("ignore", ".*validation_step.*but have no .val_dataloader.*")
    # a resumed run's checkpoint folder is meant to exist; prepare_run_dir guards fresh runs
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
