"""The GPU check, in one go (≤ 8 minutes on one GPU): every figure a GPU machine should confirm, as JSON lines.

1. `ssl`: every SSL method in the registry at 224 px, batch 128, bf16 autocast and channels-last, 30 timed
   steps after warm-up — end-to-end img/s through `sslseg.pretrain` (cached images → base crops → views made
   on the device → Lightning step) beside bare img/s (the same method's step on views already on the device),
   their ratio, and the peak GPU memory of each.
2. `compile`: `train.compile` on against off (bare steps) for two methods, with the compile time.
3. `finetune`: a ResNet-50 U-Net fine-tuned for 2 epochs, then evaluated on a labelled set and used to
   predict images, with the time of each phase.
4. `ddp`: DDP equivalence (`ddp_equivalence.py`) on two GPUs with NCCL when there are two or more.

Data: the real DSB2018 images under `$SSLSEG_DATA` when present (`--data` to name another dataset), else
the built-in synthetic nuclei. The script first prints its time estimate; with `--budget-s` (default 480)
it skips, with a line saying so, every part that would end past the budget.

`--cpu-smoke` runs every part with tiny sizes on the CPU (ResNet-18, 32 px, batch 4, 2 steps, a tiny
fine-tune; DDP on two CPU processes) in about a minute: that is its test (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py [--budget-s 480] [--methods simclr,byol] [--data DIR] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import StepTimer, emit, hardware

from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.data.datasets import RandomBaseCrops, load_unlabeled
from sslseg.data.layouts import find_samples
from sslseg.data.locations import real_dataset
from sslseg.data.synth import write_synthetic_dataset
from sslseg.methods import METHODS
from sslseg.pretrain import build_method, pretrain

BENCHMARK = "gpu_check"
COMPILE_METHODS = ("simclr", "byol")


@dataclass(frozen=True)
class Sizes:
    """The sizes of one check: the GPU's, or the CPU smoke test's."""

    device: str
    encoder: str
    size: int  # SSL view side, px
    batch: int
    steps: int  # timed steps
    warmup: int
    compile_backend: str
    ft_encoder: str
    ft_crop: int
    ft_batch: int
    ft_steps: int  # per epoch
    ft_epochs: int
    ft_images: int  # images the fine-tune reads (train + val + test)
    ft_predict: int  # images predicted
    ddp_methods: tuple[str, ...]
    ddp_batch: int
    ddp_size: int
    # rough seconds per part before anything is measured (the estimate printed first)
    est_method: float
    est_compile: float
    est_finetune: float
    est_ddp: float


GPU = Sizes(
    device="cuda",
    encoder="resnet18",
    size=224,
    batch=128,
    steps=30,
    warmup=5,
    compile_backend="inductor",
    ft_encoder="resnet50",
    ft_crop=256,
    ft_batch=16,
    ft_steps=25,
    ft_epochs=2,
    ft_images=96,
    ft_predict=16,
    ddp_methods=tuple(METHODS),
    ddp_batch=16,
    ddp_size=96,
    est_method=15.0,
    est_compile=70.0,
    est_finetune=75.0,
    est_ddp=60.0,
)
CPU_SMOKE = Sizes(
    device="cpu",
    encoder="resnet18",
    size=32,
    batch=4,
    steps=2,
    warmup=1,
    compile_backend="eager",  # dynamo traces the step as on a GPU, without inductor's C++ build
    ft_encoder="resnet18",
    ft_crop=32,
    ft_batch=2,
    ft_steps=2,
    ft_epochs=2,
    ft_images=12,
    ft_predict=2,
    ddp_methods=("simclr",),
    ddp_batch=4,
    ddp_size=32,
    est_method=3.0,
    est_compile=8.0,
    est_finetune=20.0,
    est_ddp=20.0,
)


class Budget:
    """Wall-clock budget of the whole check: a part runs only when its estimate ends within it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, part: str, estimate: float) -> bool:
        """True when `part` fits; else prints why it is skipped."""
        if self.elapsed + estimate <= self.seconds:
            return True
        emit(
            benchmark=BENCHMARK,
            part=part,
            skipped=True,
            reason=f"budget: {self.elapsed:.0f} s spent + about {estimate:.0f} s > {self.seconds:.0f} s",
        )
        return False


def _sig(x: float) -> float:
    """Four significant digits: a rate stays above zero however slow the machine."""
    return float(f"{x:.4g}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ssl_config(method: str, sz: Sizes, data: Path, output: Path, compile: bool = False) -> PretrainConfig:
    return PretrainConfig.model_validate(
        {
            "method": method,
            "encoder": sz.encoder,
            "data": {"path": str(data), "max_images": 256},
            "views": {"size": sz.size, "preset": "generic"},
            "train": {
                "epochs": 1,
                "steps_per_epoch": sz.warmup + sz.steps,
                "batch_size": sz.batch,
                "accelerator": "gpu" if sz.device == "cuda" else "cpu",
                "devices": 1,
                "precision": "bf16-mixed" if sz.device == "cuda" else "32-true",
                "channels_last": True,
                "compile": compile,
                "compile_backend": sz.compile_backend,
            },
            "output": str(output),
        }
    )


def bare_steps(cfg: PretrainConfig, images: list, channels: int, sz: Sizes) -> dict[str, float]:
    """img/s of the method's step on one batch of views already on the device (bf16 autocast on a GPU,
    channels-last), the time of the first step (compilation when on) and the peak GPU memory."""
    device = sz.device
    _reset_peak(device)
    torch.manual_seed(0)
    m = build_method(cfg, channels).to(device).to(memory_format=torch.channels_last)
    m.train()
    if cfg.train.compile:
        m.encoder.compile(backend=cfg.train.compile_backend)
    base = torch.stack([RandomBaseCrops(images, 2 * sz.size, sz.batch)[i] for i in range(sz.batch)])
    views = m.view_maker(base.float().to(device), m.n_views)
    views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times = []
    for _ in range(sz.warmup + sz.steps):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = m.ssl_loss(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.after_step()
        _sync(device)
        times.append(time.perf_counter() - t)
    timed = times[sz.warmup :]
    out = {
        "img_s": sz.batch / (sum(timed) / len(timed)),
        "first_step_s": times[0],
        "loss": float(loss.detach()),
        "peak_gpu_mib": _peak_mib(device),
    }
    del m, opt, views, base
    _free()
    return out


def e2e_steps(cfg: PretrainConfig, sz: Sizes) -> dict[str, float]:
    """img/s of `sslseg.pretrain` as users run it, timed per step after warm-up, and its peak GPU memory."""
    _reset_peak(sz.device)
    timer = StepTimer()
    pretrain(cfg, progress=False, callbacks=[timer])
    stamps = timer.stamps[sz.warmup - 1 :] if sz.warmup else timer.stamps
    img_s = sz.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    out = {"img_s": img_s, "peak_gpu_mib": _peak_mib(sz.device)}
    _free()
    return out


def check_methods(
    methods: list[str], sz: Sizes, data: Path, tmp: Path, budget: Budget, estimate: float
) -> float:
    """Part 1: one line per method; returns the measured mean seconds per method (for the estimates)."""
    images, channels = load_unlabeled(find_samples(data, allow_unlabeled=True)[:256], progress=False)
    spent: list[float] = []
    for name in methods:
        per_method = sum(spent) / len(spent) if spent else estimate
        if not budget.allows(f"ssl:{name}", per_method):
            continue
        t0 = time.perf_counter()
        cfg = _ssl_config(name, sz, data, tmp / f"ssl-{name}")
        bare = bare_steps(cfg, images, channels, sz)
        e2e = e2e_steps(cfg, sz)
        spent.append(time.perf_counter() - t0)
        emit(
            benchmark=BENCHMARK,
            part="ssl",
            method=name,
            e2e_img_s=_sig(e2e["img_s"]),
            bare_img_s=_sig(bare["img_s"]),
            ratio=round(e2e["img_s"] / bare["img_s"], 3),
            peak_gpu_mib_e2e=e2e["peak_gpu_mib"],
            peak_gpu_mib_bare=bare["peak_gpu_mib"],
            loss=round(bare["loss"], 4),
            encoder=sz.encoder,
            size=sz.size,
            batch=sz.batch,
            steps=sz.steps,
            precision="bf16-mixed" if sz.device == "cuda" else "32-true",
            channels_last=True,
            seconds=round(spent[-1], 1),
            hardware=hardware(),
        )
    return sum(spent) / len(spent) if spent else estimate


def check_compile(methods: list[str], sz: Sizes, data: Path, tmp: Path, budget: Budget) -> None:
    """Part 2: bare img/s with `train.compile` off and on, for two methods."""
    images, channels = load_unlabeled(find_samples(data, allow_unlabeled=True)[:64], progress=False)
    for name in methods:
        if not budget.allows(f"compile:{name}", sz.est_compile):
            continue
        t0 = time.perf_counter()
        torch._dynamo.reset()
        off = bare_steps(_ssl_config(name, sz, data, tmp / "c"), images, channels, sz)
        on = bare_steps(_ssl_config(name, sz, data, tmp / "c", compile=True), images, channels, sz)
        torch._dynamo.reset()
        emit(
            benchmark=BENCHMARK,
            part="compile",
            method=name,
            compiled_img_s=_sig(on["img_s"]),
            eager_img_s=_sig(off["img_s"]),
            speedup=round(on["img_s"] / off["img_s"], 3),
            compile_first_step_s=round(on["first_step_s"], 1),
            eager_first_step_s=round(off["first_step_s"], 2),
            peak_gpu_mib_compiled=on["peak_gpu_mib"],
            peak_gpu_mib_eager=off["peak_gpu_mib"],
            backend=sz.compile_backend,
            size=sz.size,
            batch=sz.batch,
            seconds=round(time.perf_counter() - t0, 1),
            hardware=hardware(),
        )


def check_finetune(sz: Sizes, data: Path, tmp: Path, budget: Budget) -> None:
    """Part 3: fine-tune a U-Net for `ft_epochs` epochs, evaluate it on the labelled images and predict."""
    if not budget.allows("finetune", sz.est_finetune):
        return
    from sslseg.data.datasets import load_heldout
    from sslseg.evaluate import evaluate_samples, load_model, summarize
    from sslseg.finetune import finetune
    from sslseg.predict import predict_files

    t0 = time.perf_counter()
    cfg = FinetuneConfig.model_validate(
        {
            "data": {
                "train": str(data),
                "task": "instance",
                "val_fraction": 0.15,
                "test_fraction": 0.2,
                "max_images": sz.ft_images,
            },
            "model": {"encoder": sz.ft_encoder, "init": "random"},
            "train": {
                "epochs": sz.ft_epochs,
                "steps_per_epoch": sz.ft_steps,
                "batch_size": sz.ft_batch,
                "crop_size": sz.ft_crop,
                "accelerator": "gpu" if sz.device == "cuda" else "cpu",
                "devices": 1,
                "val_max_images": 8,
            },
            "postprocess": {"tune": False},
            "inference": {"tile_size": max(64, sz.ft_crop)},
            "output": str(tmp / "finetune"),
        }
    )
    _reset_peak(sz.device)
    result = finetune(cfg, progress=False)
    fit_peak = _peak_mib(sz.device)
    samples = find_samples(data)[: sz.ft_images]
    t1 = time.perf_counter()  # evaluation as `sslseg evaluate` does it, on the first labelled images
    module = load_model(result.best_checkpoint)
    chosen = [x for x in samples if x.label is not None][: sz.ft_predict]
    loaded = load_heldout(chosen, module.cfg.data, module.hparams["in_channels"], progress=False)
    scores = summarize(evaluate_samples(module, loaded, progress=False))
    evaluate_s = time.perf_counter() - t1
    del module
    inputs = [s.image for s in samples[: sz.ft_predict]]
    t2 = time.perf_counter()
    report = predict_files(result.best_checkpoint, inputs, tmp / "predict", progress=False, formats="tiff")
    predict_s = time.perf_counter() - t2
    s = result.summary
    emit(
        benchmark=BENCHMARK,
        part="finetune",
        encoder=sz.ft_encoder,
        epochs_run=s["epochs_run"],
        fit_s=round(s["fit_seconds"], 1),
        train_img_s=_sig(sz.ft_epochs * sz.ft_steps * sz.ft_batch / s["fit_seconds"]),
        test_s=round(s["test_seconds"], 1),
        test_aji=round(result.test.get("aji", float("nan")), 4),
        evaluate_s=round(evaluate_s, 1),
        evaluate_images=len(chosen),
        evaluate_aji=round(scores.get("aji", float("nan")), 4),
        predict_s=round(predict_s, 1),
        predicted_images=len(report.outputs),
        predict_img_s=_sig(len(report.outputs) / predict_s),
        peak_gpu_mib_fit=fit_peak,
        crop=sz.ft_crop,
        batch=sz.ft_batch,
        seconds=round(time.perf_counter() - t0, 1),
        hardware=hardware(),
    )
    _free()


def check_ddp(sz: Sizes, tmp: Path, budget: Budget) -> None:
    """Part 4: DDP equivalence per method on two GPUs (NCCL), or on two CPU processes in the smoke test."""
    gpus = torch.cuda.device_count() if sz.device == "cuda" else 0
    if sz.device == "cuda" and gpus < 2:
        emit(benchmark=BENCHMARK, part="ddp", skipped=True, reason=f"needs 2 GPUs, found {gpus}")
        return
    from ddp_equivalence import TOLERANCE, check

    for name in sz.ddp_methods:
        if not budget.allows(f"ddp:{name}", sz.est_ddp):
            continue
        t0 = time.perf_counter()
        row = check(name, 2, sz.ddp_batch, sz.ddp_size, tmp, device=sz.device)
        emit(
            benchmark=BENCHMARK,
            part="ddp",
            **row,
            tolerance=TOLERANCE,
            processes=2,
            device=sz.device,
            global_batch=sz.ddp_batch,
            seconds=round(time.perf_counter() - t0, 1),
            hardware=hardware(),
        )


def _data(args: argparse.Namespace, sz: Sizes, tmp: Path) -> tuple[Path, str]:
    """The labelled dataset to use and what it is."""
    if args.data is not None:
        return args.data, str(args.data)
    real = None if args.cpu_smoke else real_dataset("dsb2018", "stage1_train")
    if real is not None:
        return real, "dsb2018/stage1_train"
    n, size = (sz.ft_images, 64) if args.cpu_smoke else (sz.ft_images, 512)
    return write_synthetic_dataset(tmp / "synth", n_images=n, size=size, seed=0), f"synthetic {n} × {size} px"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (the test)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip parts that would end past this")
    ap.add_argument("--methods", default=",".join(METHODS), help="SSL methods of part 1")
    ap.add_argument(
        "--data", type=Path, help="labelled dataset (default: DSB2018 under SSLSEG_DATA, else synthetic)"
    )
    ap.add_argument("--parts", default="ssl,compile,finetune,ddp")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --cpu-smoke for the CPU smoke test")
    sz = CPU_SMOKE if args.cpu_smoke else GPU
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    parts = set(args.parts.split(","))
    if sz.device == "cuda":
        torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="sslseg-gpu-check-") as name:
        tmp = Path(name)
        data, what = _data(args, sz, tmp)
        compile_methods = [m for m in COMPILE_METHODS if m in methods] or methods[:2]
        ddp_n = len(sz.ddp_methods) if sz.device == "cpu" or torch.cuda.device_count() >= 2 else 0
        plan = {
            "ssl": len(methods) * sz.est_method if "ssl" in parts else 0.0,
            "compile": len(compile_methods) * sz.est_compile if "compile" in parts else 0.0,
            "finetune": sz.est_finetune if "finetune" in parts else 0.0,
            "ddp": ddp_n * sz.est_ddp if "ddp" in parts else 0.0,
        }
        emit(
            benchmark=BENCHMARK,
            part="plan",
            estimate_s=round(sum(plan.values())),
            per_part_s={k: round(v) for k, v in plan.items()},
            budget_s=args.budget_s,
            data=what,
            device=sz.device,
            hardware=hardware(),
        )
        if "ssl" in parts:
            per_method = check_methods(methods, sz, data, tmp, budget, sz.est_method)
            left = plan["compile"] + plan["finetune"] + plan["ddp"]
            emit(
                benchmark=BENCHMARK,
                part="estimate",
                measured_s_per_method=round(per_method, 1),
                elapsed_s=round(budget.elapsed),
                estimate_left_s=round(left),
            )
        if "compile" in parts:
            check_compile(compile_methods, sz, data, tmp, budget)
        if "finetune" in parts:
            check_finetune(sz, data, tmp, budget)
        if "ddp" in parts:
            check_ddp(sz, tmp, budget)
    emit(
        benchmark=BENCHMARK,
        part="done",
        seconds=round(budget.elapsed, 1),
        within_budget=budget.elapsed <= args.budget_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
