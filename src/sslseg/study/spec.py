"""The study file and its grid: datasets × pretrainings × labelled budgets × seeds × encoder states.

The budget axis is either `label_fractions` or `labelled_images` (counts of annotated images); every cell
also stores the number of labelled images it used, validation included (`n_labelled_total` of its info).

A study YAML names what to compare; `expand` turns it into jobs — one pretraining per (dataset, SSL method),
reused by every fine-tuning cell that starts from it — each with the full, resolved config it will run and
its identity (`sslseg.study.identity`: the settings that shape its result, with paths made location-free),
so that a changed study file names exactly the cells it changed, and an upgrade or a moved folder changes none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sslseg.config import (
    FinetuneConfig,
    PretrainConfig,
    Task,
    Validation,
    ViewPreset,
    _Strict,
    deep_merge,
    load_config,
    read_yaml_mapping,
)
from sslseg.data.locations import real_data_root
from sslseg.errors import ConfigError
from sslseg.methods import get_method
from sslseg.study.identity import Identity, PathNormaliser, default_settings, identity_of

EncoderState = Literal["finetuned", "frozen"]
KeepWeights = Literal["report", "all", "none"]
BudgetKey = Literal["label_fraction", "labelled_images"]
BASELINE = "random"  # the pretraining every other one is compared with
# selection features that are kinds, not study rows (a row so named still means the kind)
FEATURE_KINDS = ("descriptors", "random", "imagenet")


class StudyDataset(_Strict):
    """One labelled dataset of the study (its unlabeled images, by default the same, feed pretraining)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: Path
    test: Path | None = Field(None, description="separate labelled test set; else test_fraction of train")
    layout: str = "auto"
    test_layout: str = "auto"
    mask_suffix: str | None = None
    task: Task = "instance"
    num_classes: int = Field(2, ge=2)
    validation: Validation = Field(
        "budget",
        description="'budget': validation comes out of each cell's labels; 'fixed': the paper's split",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    max_images: int | None = Field(None, ge=1, description="use only the first N images")
    unlabeled: Path | None = Field(
        None, description="images for pretraining; default: the train/val images of `train`"
    )
    views: ViewPreset = Field("generic", description="view preset of the pretraining on this data")
    bright_objects: bool = Field(
        False,
        description="invert dark-on-bright images (H&E, brightfield) for pretraining, fine-tuning and analysis",
    )
    classes: Path | None = Field(
        None, description="CSV of image-level classes (id,class) for nearest-neighbour retrieval"
    )
    reference_scores: dict[str, float] = Field(
        default_factory=dict,
        description="full-label benchmark score per metric for the normalised integral "
        "(default: random init at the largest label fraction)",
    )


def _refuse_overwritten(
    written: dict[str, Any], trees: list[tuple[str, dict[str, Any]]], prefix: str = ""
) -> None:
    """A study writes some settings into each job itself (the dataset's data settings, the budget, split,
    seed, encoder, output, ...). The same setting given otherwise under a `finetune:` or `pretrain:` tree
    would be replaced without a word: refuse it, naming it and where it belongs."""
    for key, value in written.items():
        for where, tree in trees:
            if not isinstance(tree, dict) or key not in tree:
                continue
            given = tree[key]
            if isinstance(value, dict) and isinstance(given, dict):
                _refuse_overwritten(value, [(where, given)], f"{prefix}{key}.")
            elif given != value and str(given) != str(value):
                raise ConfigError(
                    f"{where} sets {prefix}{key}: {given!r}, but the study sets it to {value!r} itself (from the "
                    "dataset entry, the budgets, seeds, encoder or rows): set it there instead, e.g. on the "
                    "dataset (bright_objects: true) or as the study's encoder"
                )


class Selection(_Strict):
    """How a row's annotated images are chosen from the dataset's labelled images (their labels unread)."""

    strategy: str = "typiclust"
    features: str = Field(
        "descriptors",
        description="descriptors, random, imagenet, an encoder's weights, or the name of a study row whose "
        "pretraining (trained by the study) chooses the images",
    )
    encoder: str | None = Field(
        None, description="architecture of random/imagenet features (default: the study's)"
    )

    @property
    def tag(self) -> str:
        """A folder name for the subsets this selection chooses (a weights file by its file name)."""
        features = (
            Path(self.features).stem if ("/" in self.features or "\\" in self.features) else self.features
        )
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.strategy}-{features}")


class Pretraining(_Strict):
    """Where a U-Net encoder starts: random, ImageNet, an SSL method trained here, or a weights file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    init: Literal["random", "imagenet"] | None = None
    method: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    pretrain: dict[str, Any] = Field(
        default_factory=dict, description="settings of this method's pretraining, over the study's"
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of this row's fine-tuning cells, over the study's: e.g. {semi: {enabled: true}} "
        "makes a row of semi-supervised fine-tuning from this initialisation",
    )
    selection: Selection | None = Field(
        None,
        description="choose the annotated images with `sslseg select` instead of drawing them at random: "
        "one subset per dataset and budget, the same for every seed (seeds vary the training only)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Pretraining:
        given = [k for k in ("init", "method", "weights") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"pretraining '{self.name}' needs exactly one of init, method or weights (got {given or 'none'})"
            )
        return self


class StudyConfig(_Strict):
    """Everything a study compares; saved into the study folder."""

    name: str = "study"
    output: Path = Path("runs/study")
    encoder: str = "resnet18"
    datasets: list[StudyDataset] = Field(min_length=1)
    pretrainings: list[Pretraining] = Field(min_length=1)
    label_fractions: list[float] | None = Field(None, min_length=1)
    labelled_images: list[int] | None = Field(
        None, min_length=1, description="the budget axis in annotated images, instead of label_fractions"
    )
    seeds: list[int] = Field([0], min_length=1)
    encoder_states: list[EncoderState] = Field(["finetuned"], min_length=1)
    pretrain: dict[str, Any] = Field(default_factory=dict, description="PretrainConfig settings for all")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig settings for all")
    analysis: AnalysisConfig = Field(default_factory=lambda: AnalysisConfig())
    store: Literal["auto", "sqlite", "files"] = Field(
        "auto",
        description="results store: sqlite (one machine) or files (a folder shared by a cluster's nodes); "
        "auto: the one the study folder holds, else sqlite for `study run` and files for `study slurm`",
    )
    cell_weights: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="precision of a finished cell's best.ckpt weights (float16: half the disk)"
    )
    keep_weights: KeepWeights = Field(
        "report",
        description="which finished cells keep their best.ckpt: 'report' the ones the report reopens (per "
        "dataset and pretraining the main encoder state, smallest budget, first seed; none when "
        "analysis.representation is off), 'all' every cell (to predict with any of them), 'none' no cell; "
        "a cell's weights go only once its result is stored",
    )

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        for what, names in (
            ("dataset", [d.name for d in self.datasets]),
            ("pretraining", [p.name for p in self.pretrainings]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique, repeated: {dup}")
        if BASELINE not in [p.name for p in self.pretrainings]:
            raise ValueError(
                f"the study needs a pretraining named '{BASELINE}' (init: random): every other one is "
                "compared with it"
            )
        if self.labelled_images is None and any(p.selection for p in self.pretrainings):
            raise ValueError(
                "a row with `selection` needs the budget in images (labelled_images), not fractions"
            )
        for p in self.pretrainings:
            chooser = chooser_of(self, p)
            if chooser is not None and chooser.method is None:
                raise ValueError(
                    f"row '{p.name}' chooses its images with row '{chooser.name}', which the study does not "
                    "pretrain (it has no method): give its weights file as features, or random/imagenet"
                )
        if (self.label_fractions is None) == (self.labelled_images is None):
            raise ValueError(
                "give the labelled budgets as exactly one of label_fractions (e.g. [0.1, 0.5]) or "
                "labelled_images (e.g. [4, 8, 16, 32])"
            )
        if self.label_fractions is not None:
            bad = [f for f in self.label_fractions if not 0 < f <= 1]
            if bad:
                raise ValueError(f"label fractions must lie in (0, 1], got {bad}")
        else:
            bad = [n for n in self.budgets if n < 1]
            if bad:
                raise ValueError(f"labelled image counts must be at least 1, got {bad}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"labelled budgets repeat: {self.label_fractions or self.labelled_images}")
        return self

    @property
    def budget_key(self) -> BudgetKey:
        """The data setting the budget axis varies: `label_fraction` or `labelled_images`."""
        return "label_fraction" if self.label_fractions is not None else "labelled_images"

    @property
    def budgets(self) -> list[float]:
        """The values of the budget axis, smallest first (fractions, or image counts)."""
        return sorted(
            self.label_fractions if self.label_fractions is not None else self.labelled_images or []
        )


class AnalysisConfig(_Strict):
    """What the analysis after the grid computes (the representation parts cost a little inference)."""

    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level after Holm correction")
    representation: bool = Field(True, description="CKA, retrieval, embedding maps, weight change")
    uncertainty: bool = Field(True, description="test-time-augmentation uncertainty vs error")
    max_images: int = Field(48, ge=4, description="test images used by representation/uncertainty analysis")
    examples: int = Field(3, ge=0, description="test images shown with every method's prediction")
    embedding_map: Literal["pca", "umap"] = Field(
        "pca", description="2-D map of embeddings (umap needs umap-learn)"
    )


StudyConfig.model_rebuild()

_DATA_VAR = re.compile(r"\$\{SSLSEG_DATA\}|\$SSLSEG_DATA\b")


def _expand_paths(tree: Any) -> Any:
    """Replace `${SSLSEG_DATA}` in every string by the real-data root (so presets work on any machine)."""
    if isinstance(tree, dict):
        return {k: _expand_paths(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_expand_paths(v) for v in tree]
    if isinstance(tree, str) and "SSLSEG_DATA" in tree:
        return os.path.expanduser(_DATA_VAR.sub(str(real_data_root()).replace("\\", "/"), tree))
    return tree


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read a study YAML (with `${SSLSEG_DATA}` expanded); errors name the file and the key."""
    tree = deep_merge(_expand_paths(read_yaml_mapping(path, "study file")), overrides or {})
    return load_config(StudyConfig, overrides=tree, source=str(path))


_DEFAULTS: dict[str, dict[str, Any]] = {}


def config_defaults(kind: Literal["pretrain", "finetune"]) -> dict[str, Any]:
    """The default of every setting of a pretraining or fine-tuning config in this version (dotted keys)."""
    if kind not in _DEFAULTS:
        _DEFAULTS[kind] = default_settings(PretrainConfig if kind == "pretrain" else FinetuneConfig)
    return _DEFAULTS[kind]


@dataclass
class Job:
    """One unit of work: a pretraining or a fine-tuning cell, with its resolved config."""

    key: str
    kind: Literal["pretrain", "finetune"]
    dataset: str
    pretraining: str
    config: dict[str, Any]
    identity: Identity
    depends_on: str | None = None
    fraction: float | None = None  # the budget of a label_fractions study
    labelled_images: int | None = None  # the budget of a labelled_images study
    seed: int | None = None
    state: EncoderState | None = None
    order: int = 0
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """The hash of the job's identity (what the store keeps to tell a cell's settings at a glance)."""
        return self.identity.hash


def report_cell(study: StudyConfig) -> tuple[EncoderState, float, int]:
    """(encoder state, budget, seed) of the cells whose models the report reopens, one per dataset and
    pretraining: the main encoder state, the smallest labelled budget, the first seed."""
    state: EncoderState = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
    return state, study.budgets[0], study.seeds[0]


def keeps_weights(study: StudyConfig, job: Job) -> bool:
    """Whether a finished job keeps its weights under the study's `keep_weights` (pretrainings always do:
    their cells start from them, and the report compares them with the fine-tuned encoders)."""
    if job.kind != "finetune" or study.keep_weights == "all":
        return True
    if study.keep_weights == "none" or not study.analysis.representation:
        return False
    budget = job.fraction if job.fraction is not None else job.labelled_images
    return (job.state, budget, job.seed) == report_cell(study)


def study_dir(study: StudyConfig) -> Path:
    return Path(study.output)


def split_path(study: StudyConfig, dataset: StudyDataset) -> Path:
    """The one split file every job on this dataset uses (written before the first job runs)."""
    return study_dir(study) / "splits" / f"{dataset.name}.json"


def chooser_of(study: StudyConfig, p: Pretraining) -> Pretraining | None:
    """The study row whose pretrained encoder chooses `p`'s annotated images (its selection features name
    that row), or None (features of a kind, or a weights file)."""
    if p.selection is None or p.selection.features in FEATURE_KINDS:
        return None
    return next((q for q in study.pretrainings if q.name == p.selection.features), None)


def selection_path(
    study: StudyConfig, dataset: StudyDataset, p: Pretraining, budget: float, chooser: Job | None = None
) -> Path:
    """The proposal (`to_annotate.csv`) of a row's selection on one dataset at one budget, made before the
    first cell needs it (`sslseg.study.proposals`). With features from the study's own pretraining
    (`chooser`), the folder also names that pretraining's settings: changed settings, new proposals."""
    assert p.selection is not None
    tag = p.selection.tag + (f"-{chooser.identity.settings_hash}" if chooser is not None else "")
    return study_dir(study) / "selections" / dataset.name / tag / f"n{int(budget)}" / "to_annotate.csv"


def fraction_tag(fraction: float) -> str:
    return f"f{fraction:.4g}"


def budget_tag(key: BudgetKey, value: float) -> str:
    """The budget's part of a cell's key: f0.1 for a label fraction, n8 for 8 labelled images."""
    return fraction_tag(value) if key == "label_fraction" else f"n{int(value)}"


def _pretrain_job(study: StudyConfig, ds: StudyDataset, p: Pretraining, normalise: PathNormaliser) -> Job:
    params = dict(p.params)
    decoder = (study.finetune.get("model") or {}).get("decoder_channels")
    if decoder is not None and "decoder_channels" in get_method(p.method).Params.model_fields:
        params.setdefault("decoder_channels", decoder)  # a pretrained decoder must fit the fine-tuned U-Net
    tree = deep_merge(study.pretrain, p.pretrain)
    heldout = [{"path": str(ds.train), "layout": ds.layout, "mask_suffix": ds.mask_suffix}]
    heldout[0]["split_file"] = str(split_path(study, ds))
    if ds.test is not None:
        heldout.append({"path": str(ds.test), "layout": ds.test_layout, "mask_suffix": ds.mask_suffix})
    # the encoder learns at the working scale fine-tuning uses, unless the study sets its own (see README)
    scale = (tree.get("data") or {}).get("scale", (study.finetune.get("data") or {}).get("scale", 1.0))
    written = {
        "method": p.method,
        "params": params,
        "encoder": study.encoder,
        "data": {
            "path": str(ds.unlabeled or ds.train),
            "layout": "auto" if ds.unlabeled else ds.layout,
            # unlabeled images given separately are all usable; else only the train/val split
            "split_file": None if ds.unlabeled else str(split_path(study, ds)),
            "bright_objects": ds.bright_objects,
            "scale": scale,
            "heldout": heldout,  # no test image is ever pretrained on, by id or by pixels
        },
        "views": {"preset": ds.views},
        "output": str(study_dir(study) / "pretrain" / ds.name / p.name),
    }
    _refuse_overwritten(
        written, [("pretrain", study.pretrain), (f"pretrainings[{p.name}].pretrain", p.pretrain)]
    )
    tree = deep_merge(tree, written)
    cfg = load_config(PretrainConfig, overrides=tree, source=f"pretraining '{p.name}' of the study")
    resolved = cfg.model_dump(mode="json")
    return Job(
        key=f"{ds.name}/pretrain/{p.name}",
        kind="pretrain",
        dataset=ds.name,
        pretraining=p.name,
        config=resolved,
        identity=identity_of(resolved, config_defaults("pretrain"), normalise),
    )


def _init_of(study: StudyConfig, p: Pretraining, pre: Job | None) -> str:
    if pre is not None:
        return str(Path(pre.config["output"]) / "encoder.safetensors")
    if p.weights is not None:
        return str(p.weights)
    return str(p.init)


def _finetune_job(
    study: StudyConfig,
    ds: StudyDataset,
    p: Pretraining,
    pre: Job | None,
    state: EncoderState,
    budget: float,
    seed: int,
    normalise: PathNormaliser,
    chooser: Job | None = None,
) -> Job:
    """One fine-tuning cell; `pre`: the pretraining it starts from, `chooser`: the one that chooses its
    annotated images (the cell waits for both, so they must be one job)."""
    key = study.budget_key
    cell = f"{ds.name}/{p.name}/{state}/{budget_tag(key, budget)}/s{seed}"
    data = {
        k: v
        for k, v in ds.model_dump(mode="json").items()
        if k not in {"name", "unlabeled", "views", "classes", "reference_scores"}
    }
    data["split_file"] = str(split_path(study, ds))
    if p.selection is not None:  # chosen, not drawn: the same images for every seed
        data["labelled_list"] = str(selection_path(study, ds, p, budget, chooser))
    if pre is not None and chooser is not None and pre.key != chooser.key:
        raise ConfigError(
            f"row '{p.name}' starts from its own pretraining but chooses its images with row "
            f"'{p.selection.features if p.selection else ''}''s: a cell waits on one pretraining; choose "
            "with its own, or give the other's encoder.safetensors as features"
        )
    upstream = pre or chooser  # the job the cell waits for; its settings are part of the cell's
    written = {
        "data": {**data, key: budget},
        "model": {"encoder": study.encoder, "init": _init_of(study, p, pre), "frozen": state == "frozen"},
        "train": {"seed": seed},
        "output": str(study_dir(study) / "cells" / cell),
    }
    _refuse_overwritten(
        written, [("finetune", study.finetune), (f"pretrainings[{p.name}].finetune", p.finetune)]
    )
    tree = deep_merge(deep_merge(study.finetune, p.finetune), written)
    cfg = load_config(FinetuneConfig, overrides=tree, source=f"fine-tuning cell {cell} of the study")
    resolved = cfg.model_dump(mode="json")
    # a cell started from (or choosing with) a pretraining is a new cell when that pretraining changes
    identity = identity_of(
        resolved, config_defaults("finetune"), normalise, upstream.identity if upstream else None
    )
    return Job(
        key=cell,
        kind="finetune",
        dataset=ds.name,
        pretraining=p.name,
        config=resolved,
        identity=identity,
        depends_on=upstream.key if upstream else None,
        fraction=budget if key == "label_fraction" else None,
        labelled_images=int(budget) if key == "labelled_images" else None,
        seed=seed,
        state=state,
    )


def expand(study: StudyConfig) -> list[Job]:
    """Every job of the study, pretrainings first, in a stable order."""
    jobs: list[Job] = []
    normalise = PathNormaliser(study_dir(study))  # fingerprints each data folder once
    for ds in study.datasets:
        pre_jobs: dict[str, Job] = {}
        for p in study.pretrainings:
            if p.method:
                job = _pretrain_job(study, ds, p, normalise)
                # rows that differ only in their fine-tuning (e.g. with and without semi-supervision)
                # share one pretraining
                same = next((j for j in pre_jobs.values() if j.hash == job.hash), None)
                pre_jobs[p.name] = same or job
        jobs.extend({j.key: j for j in pre_jobs.values()}.values())
        # cheap, informative cells first: the smallest budget of every pretraining before larger ones
        for seed in study.seeds:
            for budget in study.budgets:
                for state in study.encoder_states:
                    for p in study.pretrainings:
                        chooser = chooser_of(study, p)
                        jobs.append(
                            _finetune_job(
                                study,
                                ds,
                                p,
                                pre_jobs.get(p.name),
                                state,
                                budget,
                                seed,
                                normalise,
                                pre_jobs[chooser.name] if chooser else None,
                            )
                        )
    for i, job in enumerate(jobs):
        job.order = i
    return jobs


def select_jobs(jobs: list[Job], only: list[str] | None) -> list[str]:
    """The keys of `jobs` a runner works on: all of them, or those named in `only` together with the
    pretrainings they start from (a cell never waits on a pretraining no runner would take), in study order."""
    if only is None:
        return [j.key for j in jobs]
    by_key = {j.key: j for j in jobs}
    unknown = sorted(set(only) - set(by_key))
    if unknown:
        raise ConfigError(f"jobs not in the study: {unknown[:5]}{' …' if len(unknown) > 5 else ''}")
    wanted = set(only) | {by_key[k].depends_on for k in only if by_key[k].depends_on}
    return [j.key for j in jobs if j.key in wanted]
