"""The study's representation analysis, on held-out images of each dataset: linear CKA between the fine-tuned
encoders of every pretraining and between each pretrained encoder and its fine-tuned self, nearest-neighbour
retrieval of image-level classes never trained on (Ω), a 2-D map of the embeddings, how far fine-tuning moved
encoder and decoder weights, test-time-augmentation uncertainty against the error, and example predictions.

Each pretraining is represented by one cell: the main encoder state, the smallest labelled budget (fraction
or image count), the first seed — where pretraining matters most.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslseg.config import DataConfig
from sslseg.data.datasets import LoadedSample, load_heldout
from sslseg.data.layouts import find_samples
from sslseg.data.splits import load_split
from sslseg.errors import DataError
from sslseg.metrics.embeddings import (
    chance_agreement,
    embedding_map,
    linear_cka,
    nearest_neighbour_agreement,
    pca_2d,
)
from sslseg.metrics.uncertainty import uncertainty_error_correlation
from sslseg.study.analyze import budget_text, cell_budget
from sslseg.study.spec import BASELINE, StudyConfig, StudyDataset, report_cell, split_path
from sslseg.study.store import JobRow

SEED = 0  # the untrained "random" encoder shown beside the pretrained ones


def read_classes(path: Path) -> dict[str, str]:
    """Image-level classes from a CSV with an id column first and a class column second (header row)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataError(path, f"cannot read the classes file: {e}") from None
    if len(rows) < 2 or any(len(r) < 2 for r in rows[1:]):
        raise DataError(path, "expected a header and rows of 'id,class'")
    return {Path(r[0]).stem: r[1] for r in rows[1:]}


def heldout_samples(
    study: StudyConfig, ds: StudyDataset, channels: int, data: DataConfig
) -> list[LoadedSample]:
    """The dataset's validation and test images (never trained on), at most `analysis.max_images`, read
    as the runs read them: with `data`'s working scale, normalisation and intensity handling."""
    samples = find_samples(ds.train, layout=ds.layout, mask_suffix=ds.mask_suffix, allow_unlabeled=True)
    split = load_split(split_path(study, ds), [s.id for s in samples])
    by_id = {s.id: s for s in samples}
    chosen = [by_id[i] for i in split["test"] + split["val"]]
    if ds.test is not None:
        chosen = find_samples(ds.test, layout=ds.test_layout, mask_suffix=ds.mask_suffix) + chosen
    return load_heldout(chosen[: study.analysis.max_images], data, channels, progress=False)


def representative_cells(study: StudyConfig, rows: list[JobRow], dataset: str) -> dict[str, JobRow]:
    """pretraining → its done cell at the main state, smallest budget, first seed (if finished)."""
    state, budget, seed = report_cell(study)  # the cells whose weights the study keeps (keep_weights)
    out = {}
    for r in rows:
        if (
            r.kind == "finetune"
            and r.status == "done"
            and (r.dataset, r.state, r.seed) == (dataset, state, seed)
            and cell_budget(study, r) == budget
        ):
            out[r.pretraining] = r
    return {p.name: out[p.name] for p in study.pretrainings if p.name in out}


def _pretrained_encoder(study: StudyConfig, cell: JobRow, channels: int) -> torch.nn.Module:
    """The encoder a cell started from (what pretraining alone learned)."""
    from sslseg.nn.unet import build_encoder, build_unet
    from sslseg.study.features import encoder_from_weights

    init = cell.config["model"]["init"]
    if init == "random":
        torch.manual_seed(SEED)
        return build_encoder(study.encoder, channels)
    if init == "imagenet":
        return build_unet(study.encoder, channels, 2, imagenet=True).encoder
    return encoder_from_weights(init, study.encoder, channels)


def _examples_png(modules: dict[str, Any], samples: list[LoadedSample], task: str) -> str:
    """Rows of test images: the image, its ground truth and each pretraining's prediction."""
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    from sslseg.study.figures import png_base64

    names = list(modules)
    fig, axes = plt.subplots(
        len(samples), 2 + len(names), figsize=(2.2 * (2 + len(names)), 2.2 * len(samples)), squeeze=False
    )
    for i, s in enumerate(samples):
        img = s.image[:3].transpose(1, 2, 0) if s.image.shape[0] >= 3 else s.image[0]
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        panels = [("image", None), ("ground truth", s.labels)]
        for n in names:
            panels.append((n, modules[n].segment(s.image, s.native_shape)))
        base = img if img.ndim == 2 else img.mean(axis=2)
        if base.shape != s.native_shape:
            from skimage.transform import resize

            base = resize(base, s.native_shape, order=1)
        for j, (title, labels) in enumerate(panels):
            ax = axes[i][j]
            if labels is None:
                ax.imshow(img if img.shape[:2] == s.native_shape else base, cmap="gray")
            else:
                ax.imshow(np.clip(label2rgb(np.asarray(labels), image=base, bg_label=0, alpha=0.4), 0, 1))
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=9)
    return png_base64(fig)


def analyse_dataset(
    study: StudyConfig, ds: StudyDataset, rows: list[JobRow], progress: bool = True
) -> dict[str, Any]:
    """Every representation measure of one dataset (empty when no cell is finished)."""
    from sslseg.evaluate import load_model
    from sslseg.nn.unet import encoder_of
    from sslseg.study.features import global_embeddings, stage_features
    from sslseg.study.tta import tta_uncertainty

    cells = representative_cells(study, rows, ds.name)
    if not cells:
        return {}
    log = (
        (lambda m: print(f"  {ds.name}: {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    )
    first = next(iter(cells.values()))
    channels = first.info["in_channels"]
    # every cell of a dataset reads images alike (scale, normalisation, bright objects): take the first's
    samples = heldout_samples(study, ds, channels, DataConfig.model_validate(first.config["data"]))
    images = [s.image for s in samples]
    checkpoints = {n: Path(c.config["output"]) / "best.ckpt" for n, c in cells.items()}
    gone = [p for p in checkpoints.values() if not p.is_file()]
    if gone:
        raise DataError(
            gone[0],
            f"the weights of {len(gone)} cell(s) the analysis reopens are gone (the study's keep_weights is "
            f"'{study.keep_weights}'); rerun those cells with keep_weights: report or all",
        )
    modules = {n: load_model(p) for n, p in checkpoints.items()}
    tuned = {n: encoder_of(m.net) for n, m in modules.items()}
    out: dict[str, Any] = {}

    log(f"CKA on {len(images)} held-out images")
    # features of every fine-tuned encoder once: the deepest stage for the matrix, all stages below
    tuned_stages = {n: stage_features(e, images) for n, e in tuned.items()}
    deepest = {n: stages[-1] for n, stages in tuned_stages.items()}
    names = list(deepest)
    out["cka_between"] = {
        "labels": names,
        "matrix": [[linear_cka(deepest[a], deepest[b]) for b in names] for a in names],
        "what": f"Linear CKA of the deepest encoder stage between the fine-tuned encoders "
        f"({budget_text(study.budget_key, study.budgets[0])}, seed {study.seeds[0]}) on {len(images)} held-out images: "
        "1 means the same representation up to rotation and scale.",
    }
    pretrained = {n: _pretrained_encoder(study, c, channels) for n, c in cells.items()}
    out["cka_finetuning"] = {
        "per_stage": {
            n: [
                linear_cka(a, b)
                for a, b in zip(stage_features(pretrained[n], images), tuned_stages[n], strict=True)
            ]
            for n in names
        },
        "what": "Linear CKA per encoder stage (shallow → deep) between each starting encoder and the same encoder "
        "after fine-tuning: low values mean fine-tuning rewrote that stage.",
    }

    if ds.classes is not None:
        classes = read_classes(ds.classes)
        with_class = [i for i, s in enumerate(samples) if s.id in classes]
        if len(with_class) >= 3:
            log("nearest-neighbour retrieval")
            cls = [classes[samples[i].id] for i in with_class]
            imgs = [images[i] for i in with_class]
            tuned_z = {n: global_embeddings(tuned[n], imgs) for n in names}
            omega = {
                n: {
                    "pretrained": nearest_neighbour_agreement(global_embeddings(pretrained[n], imgs), cls),
                    "finetuned": nearest_neighbour_agreement(tuned_z[n], cls),
                }
                for n in names
            }
            out["retrieval"] = {
                "omega": omega,
                "chance": chance_agreement(cls),
                "n_images": len(cls),
                "class_name": f"class ({ds.classes.name})",
            }
            show = next((n for n in names if n != BASELINE), names[0])
            z = tuned_z[show]
            kind = study.analysis.embedding_map
            xy, explained = pca_2d(z) if kind == "pca" else (embedding_map(z, "umap"), np.array([]))
            out["embedding_map"] = {
                "xy": xy.tolist(),
                "explained": explained.tolist(),
                "classes": cls,
                "title": f"{show}, fine-tuned encoder: {kind.upper()} of held-out images",
            }

    changes = {}
    state = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
    for n in names:
        moved = [
            r.info["weight_change"]
            for r in rows
            if r.kind == "finetune"
            and r.status == "done"
            and (r.dataset, r.pretraining, r.state) == (ds.name, n, state)
            and r.info
            and "weight_change" in r.info
        ]
        if moved:
            changes[n] = {part: float(np.mean([m[part] for m in moved])) for part in ("encoder", "decoder")}
    if changes:
        out["weight_change"] = {
            "values": changes,
            "what": f"‖w_end − w_start‖ / ‖w_start‖ from initialisation to the best epoch, mean over the {state} "
            "cells: a pretrained encoder that moves little while its decoder moves a lot kept what it learned.",
        }

    if study.analysis.uncertainty:
        log("test-time-augmentation uncertainty")
        labelled = [s for s in samples if s.labels is not None]
        values = {}
        for n, m in modules.items():
            per_image = tta_uncertainty(m, labelled)
            u = np.array([r["uncertainty"] for r in per_image], dtype=float)
            err = np.array([r["error"] for r in per_image], dtype=float)
            corr = (
                uncertainty_error_correlation(u, err)
                if len(u) >= 3
                else {"rho": float("nan"), "p_value": float("nan")}
            )
            values[n] = {
                "mean_uncertainty": float(np.nanmean(u)),
                "mean_error": float(np.nanmean(err)),
                "rho": corr["rho"],
                "p": corr["p_value"],
            }
        out["uncertainty"] = {
            "values": values,
            "what": "Uncertainty = 1 − mean pairwise agreement of the 8 rotated/flipped predictions of an image; "
            "error = 1 − the score of the plain prediction. A positive ρ means the model knows where it fails.",
        }

    if study.analysis.examples:
        test_first = [s for s in samples if s.labels is not None][: study.analysis.examples]
        if test_first:
            out["examples_png"] = _examples_png(modules, test_first, ds.task)
    return out


def representation_analysis(
    study: StudyConfig, rows: list[JobRow], progress: bool = True
) -> dict[str, dict[str, Any]]:
    """dataset name → its representation analysis (or the error that stopped it: the score analysis and
    the report do not depend on it)."""
    out = {}
    for ds in study.datasets:
        try:
            out[ds.name] = analyse_dataset(study, ds, rows, progress)
        except Exception as e:  # e.g. ImageNet weights not on this machine, a checkpoint deleted
            message = f"{type(e).__name__}: {e}"
            print(f"  {ds.name}: representation analysis skipped: {message}", file=sys.stderr, flush=True)
            out[ds.name] = {"error": message}
    return out
