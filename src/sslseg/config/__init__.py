"""Typed settings for every run: one pydantic model per concern, loaded from YAML and `--set key=value`.

Unknown or misspelt keys are errors that suggest the closest valid key; nothing is guessed. This module holds
the schemas; reading YAML, `--set` overrides and validation errors live in `sslseg.config.loading`, whose
functions are importable from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sslseg.config.loading import deep_merge as deep_merge
from sslseg.config.loading import load_config as load_config
from sslseg.config.loading import parse_overrides as parse_overrides
from sslseg.config.loading import read_yaml_mapping as read_yaml_mapping
from sslseg.config.loading import to_yaml as to_yaml
from sslseg.data.splits import Validation
from sslseg.data.targets import DEFAULT_INSTANCE_HEAD, ObjectBalance, instance_target_layout
from sslseg.data.task_rules import task_rules

# the names of sslseg.data.task_rules.TASK_RULES and sslseg.segmentation.tasks.TASKS, spelt out for pydantic
# (tests/test_tasks.py keeps them equal)
Task = Literal["semantic", "instance"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Lightning strategies that run one process only: they cannot span several nodes
SINGLE_PROCESS_STRATEGIES = ("single_device", "single_xla", "dp")
PRECISION = "'auto' = bf16-mixed on a GPU or a CPU with native bfloat16 (AVX512-BF16, AMX), else 32"
CHANNELS_LAST = "NHWC convolutions: faster on CPUs (oneDNN) and tensor-core GPUs (RESULTS.md)"
NUM_NODES = (
    "machines the run spans (Lightning's num_nodes), each running `devices` processes: under SLURM one task "
    "per GPU (see `sslseg pretrain-slurm`); more than 1 needs a distributed strategy ('auto' or 'ddp')"
)


class _NodesChecked(_Strict):
    """Trainer settings with num_nodes and strategy, checked together: more than one node needs several
    processes."""

    @model_validator(mode="after")
    def _nodes_need_processes(self) -> _NodesChecked:
        nodes, strategy = self.num_nodes, self.strategy  # type: ignore[attr-defined]
        if nodes > 1 and strategy in SINGLE_PROCESS_STRATEGIES:
            raise ValueError(
                f"train.num_nodes={nodes} needs a distributed strategy ('auto' or 'ddp'), not "
                f"train.strategy='{strategy}', which runs one process"
            )
        return self


# the one setting that fine-tuning and pretraining data must share for an encoder to see images alike
BRIGHT_OBJECTS = (
    "invert images whose objects are darker than their background (H&E, brightfield), so all show bright "
    "objects on dark as fluorescence does; for datasets that mix the two"
)


class DataConfig(_Strict):
    """Where the images are, how they are split and how many labelled images a run may use (its budget)."""

    train: Path | None = Field(
        None, description="dataset root (any supported layout) for training/validation"
    )
    test: Path | None = Field(
        None, description="separate test dataset; if unset, test_fraction of train is held out"
    )
    layout: str = "auto"
    test_layout: str = "auto"
    mask_suffix: str | None = None
    task: Task = "instance"
    num_classes: int = Field(2, ge=2, description="semantic: classes including background")
    validation: Validation = Field(
        "budget",
        description="'budget': validation images come out of the labelled budget (val_fraction of it, at "
        "least 1; below 4 labelled images none, and a fixed schedule); 'fixed': the reference paper's "
        "validation split, the same at every budget and counted on top of it",
    )
    val_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="share of the budget ('budget') or of the labelled images ('fixed')"
    )
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of the labelled images")
    split_seed: int = Field(0, description="fixes the test (and fixed val) split independently of the budget")
    split_file: Path | None = Field(None, description="JSON split to reuse (written beside every run)")
    label_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="the budget as a share of the labelled images outside the test split ('budget') or of "
        "the training split ('fixed'); unset with labelled_images unset = all of them",
    )
    labelled_images: int | None = Field(
        None,
        ge=1,
        description="the budget as a number of labelled images (validation included with 'budget'); "
        "instead of label_fraction",
    )
    labelled_list: Path | None = Field(
        None,
        description="the annotated images the budget holds, chosen rather than drawn: a `sslseg select` "
        "to_annotate.csv (its `name` column) or a text file of image ids, one per line",
    )
    normalization: Literal["per_image", "percentile"] = "per_image"
    bright_objects: bool = Field(False, description=BRIGHT_OBJECTS)
    scale: float = Field(1.0, gt=0.0, le=4.0, description="resize factor for training and inference")
    object_size: float | None = Field(
        None,
        gt=0,
        description="instance tasks: resize each image so its median object diameter (equivalent-circle) "
        "is this many pixels; training images by their labels, other images by a first prediction; "
        "None = off",
    )
    object_size_um: float | None = Field(
        None,
        gt=0,
        description="with object_size: the objects' real median diameter in µm. Each image's object diameter "
        "is then object_size_um / its pixel size instead of being measured (labels in training, a first "
        "prediction at inference), so its working scale is object_size × pixel size / object_size_um, fixed "
        "before the network sees it; any task (semantic too). Needs the pixel size of every image (OME-XML, "
        "ImageJ or TIFF resolution tags, data.pixel_size, or predict's --pixel-size)",
    )
    pixel_size: float | None = Field(
        None,
        gt=0,
        description="µm per pixel of the training, validation and test images, instead of what their files "
        "say (for object_size_um); prediction takes --pixel-size or each file's own",
    )
    max_images: int | None = Field(None, ge=1, description="use only the first N images (quick runs)")

    @model_validator(mode="after")
    def _one_budget(self) -> DataConfig:
        if self.label_fraction is not None and self.labelled_images is not None:
            raise ValueError(
                f"label_fraction ({self.label_fraction}) and labelled_images ({self.labelled_images}) both "
                "choose the labelled budget; set only one"
            )
        if self.labelled_list is not None and self.label_fraction is not None:
            raise ValueError(
                f"labelled_list ({self.labelled_list}) names the annotated images; label_fraction "
                f"({self.label_fraction}) would draw them: set only one"
            )
        return self

    @model_validator(mode="after")
    def _one_working_scale(self) -> DataConfig:
        """object_size chooses each image's working scale itself, and only instance labels give sizes."""
        if self.object_size_um is not None and self.object_size is None:
            raise ValueError(
                f"object_size_um ({self.object_size_um} µm) says how large the objects are; object_size (px) "
                "says how large the network sees them: set object_size too (e.g. 24)"
            )
        if self.object_size is not None:
            if self.scale != 1.0:
                raise ValueError(
                    f"object_size ({self.object_size}) and scale ({self.scale}) are two ways of choosing the "
                    "working scale; set only one (scale: 1.0 with object_size)"
                )
            if not task_rules(self.task).sizes_objects and self.object_size_um is None:
                raise ValueError(
                    f"object_size applies to instance tasks (object diameters), not task '{self.task}', "
                    "unless object_size_um gives the objects' size in µm; else use scale for semantic tasks"
                )
        return self

    @property
    def measured_object_size(self) -> float | None:
        """object_size when each image's object diameter must be measured (at inference, by a first
        prediction); None when there is none or object_size_um fixes the working scale at preparation."""
        return self.object_size if self.object_size_um is None else None


class ModelConfig(_Strict):
    """The U-Net: encoder architecture, its initialisation and whether it is frozen."""

    encoder: str = "resnet18"
    init: str = Field("random", description="'random', 'imagenet' (local weights) or a weights file")
    frozen: bool = False
    instance_head: str = Field(
        DEFAULT_INSTANCE_HEAD,
        description="instance tasks: what the network predicts besides foreground (sslseg.segmentation.heads):"
        " 'contact' (distance and the borders where objects touch; the default, it halves merged nuclei on"
        " DSB2018) or 'distance' (normalised distance map only)",
    )
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)

    @field_validator("instance_head")
    @classmethod
    def _known_head(cls, head: str) -> str:
        instance_target_layout(head)  # an unknown name is an error that lists the valid ones
        return head


class TrainConfig(_NodesChecked):
    """Optimisation and the Lightning trainer."""

    seed: int = 0
    batch_size: int = Field(8, ge=1)
    crop_size: int = Field(256, ge=32)
    scale_range: tuple[float, float] = Field(
        (1.0, 1.0), description="random zoom of training crops (e.g. [0.6, 1.6] for mixed magnifications)"
    )
    gamma_jitter: float = Field(
        0.0,
        ge=0,
        le=1.5,
        description="sd of log γ of a random gamma curve on each training crop (e.g. 0.4), for test images "
        "whose objects are dimmer or brighter relative to one another than the training images'; 0 = off",
    )
    shuffle_channels: bool = Field(
        False, description="random channel order per training crop, for stains and colours not in training"
    )
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(
        50,
        ge=1,
        description="an epoch is a fixed number of steps, whatever the labels; under DDP the epoch's "
        "steps_per_epoch × batch_size crops are shared among the processes",
    )
    lr: float = Field(1e-3, gt=0)
    encoder_lr_scale: float = Field(
        1.0,
        gt=0,
        description="the encoder's learning rate is lr × this (e.g. 0.1 to keep a pretrained encoder near "
        "its start while the new decoder learns at lr)",
    )
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(10, ge=1, description="early stopping, in epochs without a better val score")
    accelerator: str = "auto"
    devices: int | str = Field("auto", description="devices (processes) per node")
    num_nodes: int = Field(1, ge=1, description=NUM_NODES)
    strategy: str = Field("auto", description="Lightning strategy, e.g. 'ddp' for several processes")
    sync_batchnorm: bool = Field(False, description="BatchNorm statistics over all processes (GPU only)")
    precision: str = Field("auto", description=PRECISION)
    channels_last: bool = Field(True, description=CHANNELS_LAST)
    deterministic: bool = False
    val_max_images: int | None = Field(None, ge=1, description="cap validation images per epoch")


class LossConfig(_Strict):
    """How the training loss weighs pixels (instance tasks): object balancing of small and dim objects."""

    object_balance: float = Field(
        0.0,
        ge=0,
        le=4,
        description="instance tasks: exponent p of object balancing; each object's foreground pixels weigh "
        "(typical area / its area)^p × (typical contrast / its contrast)^p (each factor at least 1) in the "
        "foreground loss, so small and dim objects count; 0 = off (every pixel weighs 1)",
    )
    object_balance_max: float = Field(5.0, ge=1, description="largest object-balance weight of a pixel")
    object_balance_contrast: bool = Field(
        True, description="object balancing also weighs objects dimmer than their image's typical object up"
    )
    object_balance_ring: int = Field(
        2,
        ge=0,
        description="background pixels within this many px of an object take its weight, so that a small "
        "object is not grown into its surroundings",
    )

    def balance(self) -> ObjectBalance | None:
        """The object balancing these settings ask for, or None when it is off."""
        if self.object_balance == 0:
            return None
        return ObjectBalance(
            self.object_balance,
            self.object_balance_max,
            self.object_balance_contrast,
            self.object_balance_ring,
        )


class PostprocessConfig(_Strict):
    """Instance post-processing: marker-controlled watershed on the predicted distance (and contact) map."""

    fg_threshold: float = Field(0.5, gt=0, lt=1)
    seed_threshold: float = Field(0.5, gt=0, lt=1)
    contact_threshold: float = Field(
        0.5, gt=0, lt=1, description="instance_head 'contact': seeds are cut where contact is at least this"
    )
    smooth_sigma: float = Field(1.0, ge=0)
    min_size: int = Field(8, ge=0, description="objects smaller than this many pixels are dropped")
    min_size_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="also drop objects smaller than this fraction of the image's typical object (the one "
        "holding the median object pixel)",
    )
    merge_solidity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="merge two touching objects when their union is at least this convex (area over convex "
        "hull area; 0: never), which mends nuclei cut in two (e.g. textured stained nuclei)",
    )
    tune: bool = Field(
        True, description="after training, choose thresholds on the validation split (instance tasks)"
    )


class InferenceConfig(_Strict):
    """Sliding-window inference."""

    tile_size: int = Field(512, ge=32)
    overlap: float = Field(0.25, ge=0, lt=1)
    batch_size: int = Field(4, ge=1)
    tta: bool = Field(
        False,
        description="test-time augmentation: average the probabilities of the 8 flips and quarter turns "
        "of each image (8× the inference time)",
    )
    check_fragments: bool = Field(
        True,
        description="with data.object_size: predict once more at half the size to tell fragments of objects "
        "larger than the network was trained on from whole ones (a quarter of a pass per image)",
    )


SemiMethod = Literal["mean_teacher", "self_training"]


class SemiConfig(_Strict):
    """Semi-supervised fine-tuning: the unlabeled images train too, by consistency with a mean teacher or
    as pseudo-labelled images from a teacher trained on the labels first (self-training)."""

    enabled: bool = Field(
        False,
        description="train on the unlabeled images as well (how: `method`)",
    )
    method: SemiMethod = Field(
        "mean_teacher",
        description="mean_teacher: the student learns the confident predictions of an EMA teacher on a weak "
        "view, from a strongly augmented view, in one run (FixMatch with a mean teacher). self_training: a "
        "teacher is fine-tuned on the labelled images alone, segments the unlabeled ones, and the student "
        "goes on from it on the labelled and the most confidently pseudo-labelled images (about twice the "
        "fine-tuning time)",
    )
    weight: float = Field(1.0, gt=0, description="weight of the unlabeled loss beside the labelled one")
    confidence: float = Field(0.9, ge=0.5, lt=1, description="pixels the teacher is less sure of are skipped")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="teacher = EMA of the student's weights")
    batch_size: int | None = Field(
        None, ge=1, description="unlabeled crops per step (default train.batch_size)"
    )
    rampup: float = Field(
        0.2,
        ge=0,
        le=1,
        description="the unlabeled weight rises linearly over this fraction of the run (the teacher is poor "
        "at first)",
    )
    dice: bool = Field(
        False,
        description="add a Dice term on the confident pixels to the unlabeled loss, as the supervised loss has "
        "one, so that confident background does not teach the student to miss objects",
    )
    cutmix: bool = Field(
        False,
        description="paste a box of another unlabeled crop into each strong view, and the teacher's maps "
        "alike (CutMix), so the student must get object layouts right that no single image shows",
    )
    strong_intensity: float = Field(0.3, ge=0, description="strong view: sd of per-channel gain and offset")
    strong_noise: float = Field(0.1, ge=0, description="strong view: sd of added noise")
    strong_gamma: float = Field(0.4, ge=0, le=1.5, description="strong view: sd of log γ")
    unlabeled: Path | None = Field(
        None,
        description="more unlabeled images (any folder); the training split's images outside the labelled "
        "budget are always used, validation and test images never",
    )
    pseudo_images: int = Field(
        256,
        ge=1,
        description="self_training: at most this many unlabeled images are pseudo-labelled (drawn by "
        "train.seed), which bounds the teacher's prediction time",
    )
    pseudo_keep: float = Field(
        0.5,
        gt=0,
        le=1,
        description="self_training: the share of pseudo-labelled images the student trains on, those the "
        "teacher is surest of first (images where it finds no object are never kept)",
    )
    labelled_share: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="self_training: the share of the student's training crops taken from the labelled images "
        "(the rest from pseudo-labelled ones), so a few labels are not drowned by hundreds of pseudo-labels",
    )


class FinetuneConfig(_Strict):
    """Everything one fine-tuning run needs; saved beside its results."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    inference: InferenceConfig = InferenceConfig()
    semi: SemiConfig = SemiConfig()
    output: Path = Path("runs/finetune")

    @model_validator(mode="after")
    def _balance_needs_objects(self) -> FinetuneConfig:
        if self.loss.object_balance > 0 and not task_rules(self.data.task).balances_objects:
            raise ValueError(
                f"loss.object_balance ({self.loss.object_balance}) weighs instance objects; task "
                f"'{self.data.task}' has none (set it to 0)"
            )
        return self


ViewPreset = Literal["generic", "fluorescence", "brightfield", "he", "dermoscopy"]


class ViewsConfig(_Strict):
    """How SSL views are drawn from a base crop; `preset` picks modality defaults, fields override them."""

    preset: ViewPreset = "generic"
    size: int = Field(96, ge=16, description="side of each view in pixels")
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float | None = Field(None, ge=0, le=1, description="None = preset default")
    jitter_p: float | None = Field(None, ge=0, le=1)
    brightness: float | None = Field(None, ge=0)
    contrast: float | None = Field(None, ge=0)
    saturation: float | None = Field(None, ge=0, description="colour images only")
    hue: float | None = Field(None, ge=0, le=0.5, description="colour images only")
    gray_p: float | None = Field(None, ge=0, le=1, description="colour images only")
    blur_p: float | None = Field(None, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)
    noise_std: float | None = Field(None, ge=0, description="Gaussian noise on the [0, 1] image")


class OptimConfig(_Strict):
    """The optimiser and schedule every SSL method shares (warm-up, then cosine decay)."""

    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = Field(0.06, gt=0, description="learning rate at batch size 256 (scaled linearly)")
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_fraction: float = Field(0.0, ge=0, le=1)


class PretrainTrainConfig(_NodesChecked):
    """Trainer settings of a pretraining run."""

    seed: int = 0
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="None = one pass over the images; under DDP the epoch's steps_per_epoch × batch_size "
        "samples are shared among the processes (batch_size is per process)",
    )
    batch_size: int = Field(64, ge=2)
    accelerator: str = "auto"
    devices: int | str = Field("auto", description="devices (processes) per node")
    num_nodes: int = Field(1, ge=1, description=NUM_NODES)
    strategy: str = "auto"
    precision: str = Field("auto", description=PRECISION)
    sync_batchnorm: bool = False
    channels_last: bool = Field(True, description=CHANNELS_LAST)
    compile: bool = Field(
        False,
        description="torch.compile the encoder: views have one fixed size, so it compiles once; the first "
        "steps are slower while it compiles; helps most on GPUs",
    )
    compile_backend: str = Field("inductor", description="torch.compile backend (with compile: true)")
    deterministic: bool = False


class HeldoutImages(_Strict):
    """Test images that pretraining must never see: a dataset folder, or only the test part of one."""

    path: Path
    layout: str = "auto"
    mask_suffix: str | None = None
    split_file: Path | None = Field(None, description="only the images in this split's 'test' list")


class PretrainDataConfig(_Strict):
    """The unlabeled images (labels, if any, are ignored)."""

    path: Path | None = None
    layout: str = "auto"
    max_images: int | None = Field(None, ge=1)
    split_file: Path | None = Field(
        None, description="JSON split of the labelled dataset: pretrain only on its train and val images"
    )
    scale: float = Field(
        1.0,
        gt=0.0,
        le=4.0,
        description="resize factor applied to every image before views are drawn: the fine-tuning's "
        "data.scale, so the encoder learns objects at the size it will segment them",
    )
    heldout: list[HeldoutImages] = Field(
        default_factory=list,
        description="test images never to pretrain on: images with the same sample id or the same pixels "
        "are left out, or stop the run (heldout_overlap)",
    )
    heldout_overlap: Literal["exclude", "error"] = Field(
        "exclude",
        description="pretraining images that are also held-out test images: 'exclude' leaves them out with "
        "a warning saying how many, 'error' stops with an error naming them",
    )
    base_size: int | None = Field(
        None,
        ge=16,
        description="side of the native-resolution crop views are drawn from (None = 2 × view size)",
    )
    bright_objects: bool = Field(False, description=BRIGHT_OBJECTS)


class PretrainConfig(_Strict):
    """Everything one SSL pretraining run needs; saved beside its weights."""

    method: str = "simclr"
    params: dict[str, Any] = Field(default_factory=dict, description="method settings (see `sslseg methods`)")
    encoder: str = "resnet18"
    data: PretrainDataConfig = PretrainDataConfig()
    views: ViewsConfig = ViewsConfig()
    optim: OptimConfig = OptimConfig()
    train: PretrainTrainConfig = PretrainTrainConfig()
    output: Path = Path("runs/pretrain")
