"""The training loop behind ``train_seg.py``: ``train(cfg)`` (also ``segkit.engine.train``) takes the composed
Hydra config.

One optimizer step = ``train.accum_steps`` micro-batches of ``train.batch_size`` images per process.
Rank 0 writes everything under the run directory: ``checkpoints/last.pt`` and ``best.pt``,
``metrics.jsonl`` (one line per evaluation), ``train_log.jsonl`` (one line per step: loss, lr),
TensorBoard scalars in ``tensorboard/``. Checkpoints hold all state needed to continue bit-exactly:
model, optimizer, scheduler, grad scaler, EMA, every RNG and the sampler position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segkit import labels
from segkit.data.transforms import normalization
from segkit.engine import distributed as D
from segkit.engine.ema import ModelEMA, unwrap
from segkit.engine.evaluate import evaluate
from segkit.engine.losses import build_loss
from segkit.engine.optim import build_optimizer, build_scheduler
from segkit.engine.rng import rng_state, set_rng_state
from segkit.engine.step import TrainStep
from segkit.formats.checkpoint import CheckpointError, load_checkpoint, model_metadata, save_checkpoint
from segkit.formats.description import ModelDescription
from segkit.models import build_model_from_checkpoint
from segkit.models.from_checkpoint import checkpoint_model_config

log = logging.getLogger("segkit.train")

OOM_HINT = (
    "CUDA ran out of memory. Lower train.batch_size (raise train.accum_steps to keep the effective batch), "
    "train on smaller crops (augment.train crop size), or enable mixed precision with train.amp=fp16 or bf16 "
    "(train.channels_last=true also helps)."
)


# --------------------------------------------------------------------------- precision
def resolve_amp(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """``train.amp``: ``auto`` (bf16 on GPUs with it, else fp16; off on CPU), ``none``, ``fp16``, ``bf16``."""
    if amp in (None, False, "none", "off", "fp32"):
        return None
    if amp in ("auto", True):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or none")
        return torch.float16
    raise ValueError(f"train.amp must be auto, none, fp16 or bf16, got {amp!r}")


def resolve_channels_last(value: str | bool | None, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` is on for CPU training, where NHWC measured ~1.5x the NCHW
    throughput (benchmarks/train_throughput.py); off on CUDA unless asked."""
    if value in ("auto", None):
        return device.type == "cpu"
    if isinstance(value, bool):
        return value
    raise ValueError(f"train.channels_last must be auto, true or false, got {value!r}")


# --------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """JSON-friendly copy: NaN -> None, numpy/torch scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_plain(record)) + "\n")


def run_output_dir(output_dir: str | os.PathLike | None = None) -> Path:
    """The run directory: the given one, else Hydra's ``hydra.runtime.output_dir``, else the cwd."""
    if output_dir is not None:
        return Path(output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set every batch-norm layer's running-statistics momentum; returns how many layers changed.

    MobileNetV3 uses 0.01 (made for long runs); in a short run its eval-mode statistics still hold
    much of their initial values, so short recipes (demo, tests) raise it.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"train.bn_momentum must be in (0, 1], got {momentum}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


def check_dataset_root(root: Any) -> Path:
    """Fail early, naming the key and the path, when ``dataset.root`` does not exist."""
    if root is None or str(root).strip() == "":
        raise FileNotFoundError("dataset.root is not set: pass dataset.root=/path/to/cityscapes")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset.root={str(root)!r} does not exist (resolved to {path.resolve()}); set "
            "dataset.root to the folder holding leftImg8bit/ and gtFine/ (`make sample` makes a small one)"
        )
    return path


def _model_identity(model_config: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("name", "arch", "encoder", "num_classes")
    return {k: model_config.get(k) for k in keys if k in model_config}


def check_resume_compatible(ckpt: Mapping[str, Any], model_config: Mapping[str, Any], path: Path) -> None:
    """A resume checkpoint must describe the same model and number of classes as the config."""
    theirs = dict(ckpt.get("model_config") or {})
    ours = dict(model_config)
    mismatch = {
        k: (theirs.get(k), ours.get(k))
        for k in ("name", "arch", "encoder", "num_classes", "encoder_params", "decoder_params")
        if k in theirs or k in ours
        if theirs.get(k) != ours.get(k)
    }
    if mismatch:
        what = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in mismatch.items())
        raise CheckpointError(
            f"cannot resume from {path}: it holds model {_model_identity(theirs)} but the config builds "
            f"{_model_identity(ours)} ({what}); resume with the matching model=/dataset= options"
        )


# --------------------------------------------------------------------------- the run
class Trainer:
    """Builds everything from the config, restores a checkpoint if asked, and runs the loop."""

    def __init__(self, cfg: DictConfig, out_dir: Path, info: D.DistInfo) -> None:
        self.cfg = cfg
        self.tcfg = cfg.train
        self.info = info
        self.device = info.device
        self.out = out_dir
        self.ckpt_dir = out_dir / "checkpoints"
        self.iters = int(self.tcfg.iters)
        self.accum = int(self.tcfg.accum_steps)
        self.batch_size = int(self.tcfg.batch_size)
        if self.iters <= 0 or self.batch_size <= 0 or self.accum <= 0:
            raise ValueError(
                f"train.iters={self.iters}, train.batch_size={self.batch_size} and "
                f"train.accum_steps={self.accum} must all be positive"
            )
        self.eval_every = int(self.tcfg.get("eval_every") or self.iters)
        self.ckpt_every = int(self.tcfg.get("checkpoint_every") or self.eval_every)
        self.stop_after = self.tcfg.get("stop_after")
        self.num_classes = int(cfg.dataset.num_classes)
        self.class_names = list(cfg.dataset.get("class_names") or labels.CLASS_NAMES)[: self.num_classes]
        if len(self.class_names) != self.num_classes:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        self.ignore_index = int(cfg.dataset.ignore_index)
        self.amp_dtype = resolve_amp(self.tcfg.amp, self.device)
        self.channels_last = resolve_channels_last(self.tcfg.channels_last, self.device)
        mean, std = normalization(cfg.augment)
        #: what every checkpoint says about the model: the normalisation training used, classes, size
        self.description = ModelDescription.for_classes(
            self.class_names,
            mean=mean,
            std=std,
            input_size=cfg.dataset.input_size,
            ignore_index=self.ignore_index,
        )
        self.best_miou = -math.inf
        self.last_metrics: dict[str, Any] = {}
        self.writer: Any = None

    # ---------------------------------------------------------------- build
    def build(self) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        self.root = check_dataset_root(cfg.dataset.root)
        seed_everything(int(cfg.seed))
        if tcfg.get("threads"):
            torch.set_num_threads(int(tcfg.threads))

        self.resume_path, resume_ckpt = self._resume_checkpoint()

        model, self.model_config = self._build_model()
        if resume_ckpt is not None:
            check_resume_compatible(resume_ckpt, self.model_config, self.resume_path)

        bn_momentum = tcfg.get("bn_momentum")
        if bn_momentum is not None:
            set_bn_momentum(model, float(bn_momentum))
        if self.info.distributed and tcfg.sync_bn:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.info.is_main:
                log.warning("train.sync_bn: SyncBatchNorm needs CUDA; on CPU each process keeps own BN stats")
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.raw_model = model
        ema_cfg = tcfg.ema
        self.ema = (
            ModelEMA(model, decay=float(ema_cfg.decay), warmup=bool(ema_cfg.warmup))
            if ema_cfg.enabled
            else None
        )
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if tcfg.compile:
            model = torch.compile(model)
        self.model = model

        self.optimizer = build_optimizer(cfg.optim, self.raw_model)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim.get("scheduler") or {}, self.iters)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        lcfg = tcfg.loss
        self.criterion = build_loss(
            str(lcfg.name),
            ignore_index=self.ignore_index,
            class_weights=lcfg.class_weights,
            ohem_thresh=float(lcfg.ohem_thresh),
            ohem_min_kept=int(lcfg.ohem_min_kept),
        ).to(self.device)
        grad_clip = tcfg.get("grad_clip")
        self.step_fn = TrainStep(
            model=self.model,
            criterion=self.criterion,
            optimizer=self.optimizer,
            device=self.device,
            scheduler=self.scheduler,
            scaler=self.scaler,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            grad_clip=float(grad_clip) if grad_clip else None,
            ema=self.ema,
        )

        sampler_state = None
        if resume_ckpt is not None:
            sampler_state = self._restore(resume_ckpt)
        self._build_data(sampler_state)
        if resume_ckpt is not None:
            set_rng_state(resume_ckpt["rng"])

    def _build_model(self) -> tuple[nn.Module, dict[str, Any]]:
        """The model to train and its config: ``cfg.model``, or the model an ``init_checkpoint`` holds.

        ``init_checkpoint`` starts a new run from a saved model, its architecture (e.g. a NetAdapt result,
        whose block table is its model config) and its weights; the ``model`` group is then not used.
        """
        init = self.cfg.get("init_checkpoint")
        if init in (None, "", False):
            from hydra.utils import instantiate  # the model group builds by its _target_

            model = instantiate(self.cfg.model, num_classes=self.num_classes, _convert_="all")
            config = OmegaConf.to_container(self.cfg.model, resolve=True)
            config["num_classes"] = self.num_classes
            return model, config
        ckpt = load_checkpoint(init, map_location="cpu")
        config = checkpoint_model_config(ckpt, init)
        theirs = int(config.get("num_classes", self.num_classes))
        if theirs != self.num_classes:
            raise CheckpointError(
                f"init_checkpoint={init} has {theirs} classes but dataset.num_classes={self.num_classes}"
            )
        model = build_model_from_checkpoint(ckpt).train()
        if self.info.is_main:
            log.info("model %s and its weights from init_checkpoint=%s", config.get("name"), init)
        return model, {"_target_": "segkit.models.build_model", **config}

    def _resume_checkpoint(self) -> tuple[Path | None, dict[str, Any] | None]:
        resume = self.cfg.get("resume")
        if resume in (None, False, "", "null"):
            return None, None
        path = (
            self.ckpt_dir / "last.pt"
            if resume is True or str(resume).lower() == "true"
            else Path(str(resume))
        )
        if not path.is_file():
            hint = (
                " (resume=true reads <run dir>/checkpoints/last.pt: pass the old run's hydra.run.dir=..., "
                "or resume=/path/to/last.pt)"
                if path == self.ckpt_dir / "last.pt"
                else ""
            )
            raise FileNotFoundError(f"resume={resume!r}: no checkpoint at {path}{hint}")
        return path, load_checkpoint(path, map_location="cpu")

    def _restore(self, ckpt: Mapping[str, Any]) -> Any:
        for key in ("optimizer", "scheduler", "step", "rng"):
            if key not in ckpt:
                raise CheckpointError(
                    f"cannot resume from {self.resume_path}: it has no training state ('{key}')"
                )
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                log.warning("resume: %s has no EMA weights, EMA restarts from the model", self.resume_path)
                self.ema.load_weights(unwrap(self.raw_model).state_dict())
            else:
                self.ema.load_weights(ckpt["ema"])
        if int(ckpt.get("world_size", 1)) != self.info.world_size:
            log.warning(
                "resume: %s was written by %s process(es), this run has %d; the data order differs from "
                "an uninterrupted run (the step count and schedule continue)",
                self.resume_path,
                ckpt.get("world_size", 1),
                self.info.world_size,
            )
        self.step_fn.step = int(ckpt["step"])
        self.best_miou = float(ckpt.get("best_miou", -math.inf))
        self.last_metrics = dict(ckpt.get("metrics") or {})
        if int(ckpt["step"]) > self.iters:
            raise ValueError(
                f"resume: {self.resume_path} is at step {ckpt['step']} > train.iters={self.iters}"
            )
        log.info("resumed from %s at step %d", self.resume_path, ckpt["step"])
        return ckpt.get("sampler")

    def _build_data(self, sampler_state: Any) -> None:
        from segkit.data.build import build_datasets
        from segkit.data.loader import build_train_loader, build_val_loader

        self.train_ds, self.val_ds = build_datasets(self.cfg.dataset, self.cfg.augment)
        workers = int(self.tcfg.num_workers)
        pin = self.device.type == "cuda"
        self.train_loader = build_train_loader(
            self.train_ds,
            batch_size=self.batch_size,
            num_workers=workers,
            seed=int(self.cfg.seed),
            rank=self.info.rank,
            world_size=self.info.world_size,
            pin_memory=pin,
        )
        # Creating the loader's iterator draws a base seed; a private generator keeps that draw off the
        # global torch RNG, whose state is part of the checkpoint.
        self.train_loader.generator = torch.Generator().manual_seed(int(self.cfg.seed))
        self.sampler = self.train_loader.batch_sampler.sampler
        if sampler_state is not None:
            # The position follows from the step count: this rank consumed step x accum x batch samples.
            expected = self.sampler.state_at(self.step_fn.step * self.accum * self.batch_size)
            if dict(sampler_state) != expected:
                log.warning(
                    "resume: checkpoint sampler state %s does not fit this run's batch size or processes; "
                    "continuing from %s",
                    dict(sampler_state),
                    expected,
                )
            self.sampler.load_state_dict(expected)
        # Validation: each rank takes every world_size-th image, no padding, so each image counts once.
        self.val_loader = build_val_loader(
            self.val_ds,
            batch_size=int(self.tcfg.eval_batch_size),
            num_workers=min(workers, 2),
            rank=self.info.rank,
            world_size=self.info.world_size,
            pin_memory=pin,
        )

    # ---------------------------------------------------------------- state
    def checkpoint_payload(self, step: int) -> dict[str, Any]:
        """Self-describing checkpoint (see ARCHITECTURE.md) with the full training state."""
        payload = model_metadata(self.model_config, self.description)
        payload.update(
            model=unwrap(self.raw_model).state_dict(),
            ema=self.ema.weights() if self.ema is not None else None,
            step=int(step),
            metrics=_plain(self.last_metrics),
            best_miou=float(self.best_miou),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=rng_state(),
            sampler=self.sampler.state_at(step * self.accum * self.batch_size),  # consumed by this rank
            config=OmegaConf.to_container(self.cfg, resolve=True),
            world_size=self.info.world_size,
        )
        return payload

    def save(self, step: int, *, best: bool) -> None:
        if not self.info.is_main:
            return
        payload = self.checkpoint_payload(step)
        save_checkpoint(self.ckpt_dir / "last.pt", payload)
        if best:
            save_checkpoint(self.ckpt_dir / "best.pt", payload)

    # ---------------------------------------------------------------- evaluation
    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN running statistics; EMA weights too).

        Without SyncBatchNorm each rank updates its BN statistics from its own batches; evaluation
        and checkpoints must use one model, rank 0's.
        """
        if not self.info.distributed:
            return
        import torch.distributed as dist

        tensors = list(unwrap(self.raw_model).buffers())
        if self.ema is not None:
            tensors += list(self.ema.module.state_dict().values())
        for t in tensors:
            dist.broadcast(t, src=0)

    def run_evaluation(self, step: int, train_loss: float | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.sync_buffers()
        kwargs = dict(
            num_classes=self.num_classes,
            device=self.device,
            ignore_index=self.ignore_index,
            class_names=self.class_names,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
        )
        res = evaluate(self.model, self.val_loader, **kwargs)
        self.model.train()
        record: dict[str, Any] = {
            "step": step,
            "miou": res["miou"],
            "iou": res["iou"],
            "pixel_acc": res["pixel_acc"],
            "mean_acc": res["mean_acc"],
            "mean_category_iou": res["mean_category_iou"],
            "num_images": res["num_images"],
            "num_pixels": res["num_pixels"],
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": train_loss,
        }
        if self.ema is not None:
            ema_res = evaluate(self.ema.module, self.val_loader, **kwargs)
            record["ema_miou"] = ema_res["miou"]
            record["ema_iou"] = ema_res["iou"]
        record["eval_seconds"] = time.perf_counter() - t0
        self.last_metrics = record
        if self.info.is_main:
            from segkit.evaluation import format_iou_table

            log.info("evaluation at step %d/%d:\n%s", step, self.iters, format_iou_table(res))
            if self.ema is not None:
                log.info("EMA mIoU %.4f (model %.4f)", record["ema_miou"], record["miou"])
            _append_jsonl(self.out / "metrics.jsonl", record)
            if self.writer is not None:
                self.writer.add_scalar("val/miou", res["miou"], step)
                self.writer.add_scalar("val/pixel_acc", res["pixel_acc"], step)
                if self.ema is not None:
                    self.writer.add_scalar("val/ema_miou", record["ema_miou"], step)
                for name, v in res["iou"].items():
                    self.writer.add_scalar(f"val_iou/{name}", v, step)
        return record

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        self.build()
        tcfg = self.tcfg
        start = self.step_fn.step
        main = self.info.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if tcfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(
                    str(self.out / "tensorboard"), purge_step=start + 1 if start else None
                )
            log.info(
                "training %s for %d steps from step %d: %d process(es) x %d images x %d accumulation, "
                "device %s, amp %s, output %s",
                self.model_config.get("name", self.model_config.get("arch")),
                self.iters,
                start,
                self.info.world_size,
                self.batch_size,
                self.accum,
                self.device,
                self.amp_dtype,
                self.out,
            )
        images_per_step = self.batch_size * self.accum * self.info.world_size
        progress = _progress_bar(self.iters, start, enabled=main and tcfg.progress)
        log_every = int(tcfg.log_every)
        data_iter = iter(self.train_loader)
        step = start
        loss_sum, loss_count = 0.0, 0
        t_start = t_window = time.perf_counter()
        window_steps = 0
        self.model.train()
        stopped = False
        try:
            while step < self.iters:
                batches = [next(data_iter) for _ in range(self.accum)]
                lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
                loss = float(self.step_fn(batches))
                step = self.step_fn.step
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss is {loss} at step {step}; lower optim.lr or enable train.grad_clip"
                    )
                loss_sum, loss_count, window_steps = loss_sum + loss, loss_count + 1, window_steps + 1
                if main:
                    _append_jsonl(self.out / "train_log.jsonl", {"step": step, "loss": loss, "lr": lr})
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", loss, step)
                        self.writer.add_scalar("train/lr", lr, step)
                now = time.perf_counter()
                ips = window_steps * images_per_step / max(now - t_window, 1e-9)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                if main and (step % log_every == 0 or step == self.iters):
                    eta = (self.iters - step) * (now - t_start) / max(step - start, 1)
                    log.info(
                        "step %d/%d loss %.4f lr %.3e %.1f img/s eta %s",
                        step,
                        self.iters,
                        loss,
                        lr,
                        ips,
                        time.strftime("%H:%M:%S", time.gmtime(eta)),
                    )
                    if self.writer is not None:
                        self.writer.add_scalar("train/img_per_s", ips, step)
                    t_window, window_steps = now, 0
                if step % self.eval_every == 0 or step == self.iters:
                    record = self.run_evaluation(step, loss_sum / max(loss_count, 1))
                    loss_sum, loss_count = 0.0, 0
                    miou = record["miou"]
                    best = miou is not None and math.isfinite(miou) and miou > self.best_miou
                    if best:
                        self.best_miou = miou
                    self.save(step, best=best)
                elif step % self.ckpt_every == 0:
                    self.save(step, best=False)
                if self.stop_after is not None and step >= int(self.stop_after) and step < self.iters:
                    if step % self.eval_every and step % self.ckpt_every:
                        self.save(step, best=False)
                    log.info("stopping at step %d (train.stop_after); resume with resume=true", step)
                    stopped = True
                    break
        except torch.cuda.OutOfMemoryError as exc:
            raise torch.cuda.OutOfMemoryError(f"{exc}\n{OOM_HINT}") from exc
        finally:
            if progress is not None:
                progress.close()
            if self.writer is not None:
                self.writer.close()
        self.sync_buffers()
        if tcfg.debug_dump_weights:
            torch.save(unwrap(self.raw_model).state_dict(), self.out / f"weights_rank{self.info.rank}.pt")
        summary = {
            "step": step,
            "stopped": stopped,
            "best_miou": self.best_miou if math.isfinite(self.best_miou) else None,
            "last": self.last_metrics,
            "output_dir": str(self.out),
            "seconds": time.perf_counter() - t_start,
        }
        if main:
            log.info(
                "done at step %d in %.1f s, best mIoU %s", step, summary["seconds"], summary["best_miou"]
            )
        return summary


def _progress_bar(total: int, initial: int, enabled: Any) -> Any:
    """tqdm bar on a terminal (``train.progress``: auto | true | false); log lines carry progress too."""
    if enabled in (False, None, "false"):
        return None
    if enabled == "auto" and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train as the config says; returns a summary (final step, best mIoU, last metrics, output dir).

    Works in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA); only rank 0 writes.
    """
    info = D.init_distributed(str(cfg.train.device))
    threads = torch.get_num_threads()
    try:
        out = Path(D.broadcast_object(str(run_output_dir(output_dir))))
        return Trainer(cfg, out, info).run()
    finally:
        torch.set_num_threads(threads)  # train.threads is for this run only (matters when called in-process)
        D.cleanup()
