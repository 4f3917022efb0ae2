"""One trainer for every training run (stage 1 on FACap, stage 2 on FashionIQ, every ablation).

It owns what makes a run reproducible and resumable, and nothing model-specific:
- AdamW (parameters that require grad; weight decay on all of them, as SPRC, or none on biases and
  norms, as LAVIS: ``weight_decay_exempt``), warm-up then cosine decay or one-cycle, gradient clipping;
- a data order that depends only on (seed, epoch), so a resumed run sees the same batches;
- a checkpoint every ``checkpoint_every`` steps, written atomically: model, optimiser, schedule,
  step, RNG states; ``train`` resumes from it when it exists;
- a non-finite loss stops the run with the step and the loss parts, before the weights are touched;
- a progress bar and a JSONL metrics log (trimmed back to the checkpoint on resume);
- optionally, a validation curve: a ``validate(model, step)`` callable run every ``validate_every``
  steps and after the last, its points kept beside the checkpoint (``validation.jsonl``, and each
  point's per-query rankings in ``validation/step-<N>.parquet``), trimmed back like the metrics.
  Validation changes nothing in the training (model modes and every RNG are restored around it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fashionblip2.common.io import atomic_path, write_parquet_atomic
from fashionblip2.common.runtime import resolve_device, seed_everything
from fashionblip2.training.distributed import average_gradients, init_from_env, world
from fashionblip2.training.grad_cache import grad_cache_step

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
VALIDATION = "validation.jsonl"  # one line per validation point: step, epoch and what validate returned
VALIDATION_RANKINGS = "validation"  # a folder: step-<N>.parquet, the per-query rankings of each point


WEIGHT_DECAY_EXEMPTIONS = ("none", "biases_and_norms")
LR_SCALINGS = ("none", "linear", "sqrt")
_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase)


class TrainingError(RuntimeError):
    pass


def decay_groups(model: torch.nn.Module, weight_decay: float, exempt: str) -> list[dict[str, Any]]:
    """AdamW's parameter groups (parameters that require grad, in ``named_parameters`` order).

    ``none``: one group, decayed. ``biases_and_norms``: as LAVIS's BLIP-2 models
    (``get_optimizer_params``: ``p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n`` gets no
    decay): every parameter of fewer than two dimensions (biases, norm scales and shifts, a learnt
    temperature), every bias and every parameter of a norm layer get none; matched by shape and by
    module type rather than by LAVIS's name fragments, which depend on its modules' names."""
    if exempt not in WEIGHT_DECAY_EXEMPTIONS:
        raise ValueError(f"weight_decay_exempt must be one of {WEIGHT_DECAY_EXEMPTIONS}, not {exempt!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if exempt == "none":
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    in_norms = {
        f"{module_name}.{n}" if module_name else n
        for module_name, module in model.named_modules()
        if isinstance(module, _NORMS)
        for n, _ in module.named_parameters(recurse=False)
    }
    skip = {n for n, p in named if p.ndim < 2 or n.endswith("bias") or n in in_norms}
    groups = [
        {"params": [p for n, p in named if n not in skip], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in skip], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


@dataclass
class TrainConfig:
    """One training run's recipe and how it runs; every field from config (training.<run> and the
    shared training keys: :func:`fashionblip2.training.runs.train_config`), none defaulted here."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    schedule: str  # cosine (linear warm-up, cosine decay to 0) | onecycle
    eps: float  # AdamW's; SPRC fine-tunes FashionIQ with 1e-7
    onecycle_div_factor: float  # SPRC: 100
    grad_clip: float
    seed: int
    checkpoint_every: int
    device: str  # auto (cuda when there is one) | cpu | cuda | cuda:N
    precision: str  # fp32 | bf16 (autocast; on GPU)
    gradient_checkpointing: bool
    micro_batch_size: int  # 0: the whole batch at once; else a gradient cache over micro-batches
    # training.weight_decay_exempt: none (decay on every parameter, as SPRC's optimiser) |
    # biases_and_norms (none on them, as LAVIS: :func:`decay_groups`)
    weight_decay_exempt: str
    # Steps between validation points (0: one point, after the last step); used only when ``train``
    # is given a ``validate`` callable. training.<run>.validate_every; a recipe without it (the
    # pretraining run's) gets 0 from ``train_config``.
    validate_every: int
    # training.<run>.lr_scaling: none (the optimiser's lr is ``lr``) | linear | sqrt (``lr`` times
    # batch_size / lr_reference_batch_size, or its square root: :attr:`effective_lr`), with
    # lr_reference_batch_size the batch ``lr`` was tuned at (SPRC's 2e-5: 128). Defaulted, unlike the
    # fields above: a recipe (and a checkpoint) from before the switch trains with ``lr`` as given.
    lr_scaling: str = "none"
    lr_reference_batch_size: int | None = None

    def __post_init__(self):
        if self.weight_decay_exempt not in WEIGHT_DECAY_EXEMPTIONS:
            raise ValueError(
                f"weight_decay_exempt must be one of {WEIGHT_DECAY_EXEMPTIONS}, not {self.weight_decay_exempt!r}"
            )
        if self.schedule not in ("cosine", "onecycle"):
            raise ValueError(f"schedule must be cosine or onecycle, not {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, not {self.lr_scaling!r}")
        if self.lr_scaling != "none" and not (self.lr_reference_batch_size or 0) >= 1:
            raise ValueError(
                f"lr_scaling {self.lr_scaling} needs lr_reference_batch_size (the batch lr was tuned at), "
                f"not {self.lr_reference_batch_size!r}"
            )
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be 0 (after the last step only) or more, not {self.validate_every}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    # How a run is computed, not what it computes: a job may move to another device (or turn
    # gradient checkpointing on to fit it) and still resume its checkpoint.
    RUNTIME_FIELDS = ("device", "gradient_checkpointing")

    # Fields added after checkpoints were first written: a checkpoint without one was trained with
    # torch's value (AdamW's eps, OneCycleLR's div_factor), which is what it resumes with; one from
    # before validation kept no curve (validate_every 0).
    #
    # validate_every is in the resume key although it changes no weight: the checkpoint folder holds
    # the curve up to the checkpoint's step, and a run resumed with another cadence would continue it
    # with points at other steps (a mixed curve, whose best point would depend on where the job was
    # killed). Refused instead, as any other change: a curve is always one cadence, start to end.
    # One from before lr scaling trained with lr as given (none; its reference batch meant nothing).
    ADDED_FIELDS = {
        "eps": 1e-8,
        "onecycle_div_factor": 25.0,
        "weight_decay_exempt": "none",
        "validate_every": 0,
        "lr_scaling": "none",
        "lr_reference_batch_size": None,
    }

    def resume_key(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed. Under lr_scaling none the reference batch
        changes nothing, so it is not part of the key (None)."""
        key = {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_FIELDS} | {"betas": list(self.betas)}
        if self.lr_scaling == "none":
            key["lr_reference_batch_size"] = None
        return key

    @property
    def effective_lr(self) -> float:
        """The optimiser's learning rate (the peak of its schedule): ``lr`` scaled from the reference
        batch to ``batch_size`` as ``lr_scaling`` says (linear: x batch/reference; sqrt: x its root)."""
        if self.lr_scaling == "none":
            return self.lr
        ratio = self.batch_size / self.lr_reference_batch_size
        return self.lr * (ratio if self.lr_scaling == "linear" else math.sqrt(ratio))

    def resumes(self, saved: dict[str, Any]) -> bool:
        """Whether a checkpoint written with config ``saved`` continues this run."""
        saved = self.ADDED_FIELDS | {k: v for k, v in saved.items() if k not in self.RUNTIME_FIELDS}
        return saved == self.resume_key()

    def validates_at(self, step: int) -> bool:
        """Whether a validation point follows step ``step`` (counted from 1): every ``validate_every``
        steps, and always after the last."""
        return bool(self.validate_every and step % self.validate_every == 0) or step == self.steps

    def validation_steps(self, up_to: int) -> list[int]:
        """The steps of the curve's points up to step ``up_to``."""
        return [s for s in range(1, min(up_to, self.steps) + 1) if self.validates_at(s)]


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch (dict, list or tuple, nested) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), last partial batch dropped
    (in-batch negatives want full batches)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's schedule, on the optimiser's groups set to :attr:`TrainConfig.effective_lr` (the
    scaled lr is the schedule's peak: warm-up and cosine, or one-cycle's ``max_lr``); logged."""
    lr = cfg.effective_lr
    if cfg.lr_scaling == "none":
        log.info("learning rate %g (as given)", lr)
    else:
        log.info(
            "learning rate %g: %g at batch %d, scaled (%s) to batch %d",
            lr,
            cfg.lr,
            cfg.lr_reference_batch_size,
            cfg.lr_scaling,
            cfg.batch_size,
        )
    optimizer.defaults["lr"] = lr
    for group in optimizer.param_groups:
        group["lr"] = lr  # a fresh optimiser's; LambdaLR takes it as each group's base lr
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=max(cfg.steps, 2),
            pct_start=min(0.3, max(cfg.warmup_steps, 1) / max(cfg.steps, 2)),
            div_factor=cfg.onecycle_div_factor,
        )

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@contextlib.contextmanager
def _untouched(model: torch.nn.Module) -> Iterator[None]:
    """Run a block without leaving a trace on training: every RNG (python, numpy, torch, each CUDA
    device's) and every module's train/eval mode are as before afterwards; the block runs in eval
    mode without gradients."""
    state = _rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        _set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _validation_point(
    validate: Callable[[torch.nn.Module, int], dict[str, Any]],
    model: torch.nn.Module,
    step: int,
    epoch: int,
    out: Path,
) -> None:
    """Run ``validate`` and keep its point: the rankings (a ``rankings`` DataFrame in what it returns,
    if any) first, then the line of ``validation.jsonl``, which is what makes the point count."""
    with _untouched(model):
        result = dict(validate(model, step))
    rankings = result.pop("rankings", None)
    if rankings is not None:
        write_parquet_atomic(out / VALIDATION_RANKINGS / f"step-{step}.parquet", rankings)
    with open(out / VALIDATION, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, **result}) + "\n")
    log.info("validation at step %d: %s", step, result.get("summary", result))


def train(
    model: torch.nn.Module,
    n_examples: int,
    make_batch: Callable[[Sequence[int], int], Any],
    loss_fn: Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    stop_after: int | None = None,
    validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``out_dir/checkpoint.pt`` if it exists.

    ``make_batch(indices, step)`` builds a batch from example indices (any randomness in it must come
    from ``step``, so that a resumed run builds the same batches); its tensors are moved to the
    device. ``loss_fn(model, batch)`` returns a dict with a ``loss`` entry (and any parts to log).
    ``stop_after`` ends the call after that many steps in total, as a killed job would (used by tests).

    Under ``torchrun`` (WORLD_SIZE > 1) the run is data-parallel: ``cfg.batch_size`` is the global
    batch, each rank builds its slice of it, the model's losses gather embeddings across ranks (the
    negatives are the global batch), and rank 0 writes checkpoints and metrics.

    ``validate(model, step)``, if given, runs after the optimiser step of every step where
    ``cfg.validates_at(step)`` (every ``cfg.validate_every`` steps, and after the last), before that
    step's checkpoint is written: so a checkpoint's folder holds every point up to its step. It gets
    the plain module (not the DDP wrapper) in eval mode under ``torch.no_grad()``, on rank 0 only
    (the other ranks wait at a barrier); modes and RNG states are restored after it, so the weights
    are those of a run without it. It returns a JSON-able dict (a ``rankings`` DataFrame in it goes
    to ``validation/step-<N>.parquet``); ``validation.jsonl`` gets ``{"step", "epoch", **the rest}``
    (``epoch``: the 0-based epoch the step belongs to, as in ``metrics.jsonl``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = init_from_env(resolve_device(cfg.device, "training.device"))
    rank, world_size = world()
    if cfg.batch_size % world_size:
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    model.to(device)
    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise TrainingError(f"{type(model).__name__} does not support gradient checkpointing")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    seed_everything(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("no parameter requires grad: nothing to train")
    groups = decay_groups(model, cfg.weight_decay, cfg.weight_decay_exempt)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    step = 0
    if (out / CHECKPOINT).exists():
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
        if not cfg.resumes(state["config"]):
            raise TrainingError(
                f"{out / CHECKPOINT} was written with another training config; "
                "use a new output folder or the same config"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step = state["step"]
        log.info("resuming from %s at step %d of %d", out / CHECKPOINT, step, cfg.steps)
    if rank == 0:
        _trim_metrics(out / METRICS, step)
        _trim_validation(out, step)
        if validate is not None:
            kept = [p["step"] for p in read_validation(out)]
            if kept != cfg.validation_steps(step):
                raise TrainingError(
                    f"{out / CHECKPOINT} is at step {step} but {out / VALIDATION} holds points at steps "
                    f"{kept}, not {cfg.validation_steps(step)}: it was trained without validation, or the "
                    "curve was removed; use a new checkpoint folder to get a whole curve"
                )
    trained = model
    if world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    per_epoch = len(batch_order(n_examples, cfg.batch_size, cfg.seed, 0))
    if per_epoch == 0:
        raise TrainingError(f"{n_examples} examples make no full batch of {cfg.batch_size}")
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress or rank > 0)
    with open(out / METRICS if rank == 0 else os.devnull, "a", encoding="utf-8") as metrics:
        while step < cfg.steps and (stop_after is None or step < stop_after):
            epoch, position = divmod(step, per_epoch)
            indices = batch_order(n_examples, cfg.batch_size, cfg.seed, epoch)[position]
            batch = to_device(make_batch(indices[rank::world_size].tolist(), step), device)
            optimizer.zero_grad(set_to_none=True)
            cached = 0 < cfg.micro_batch_size < cfg.batch_size // world_size
            if cached:
                # The plain module, not DDP: the cache back-propagates several times per step, and the
                # gradients are averaged over ranks once, below.
                parts = grad_cache_step(model, batch, cfg.micro_batch_size, autocast)  # back-propagates
                if world_size > 1:
                    average_gradients(params)
            else:
                with autocast:
                    parts = loss_fn(trained, batch)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) for k, v in parts.items()}
                raise TrainingError(
                    f"non-finite loss at step {step} (epoch {epoch}): {values}; the last good "
                    f"checkpoint is {out / CHECKPOINT}. Lower the learning rate or check the data."
                )
            if not cached:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            record = {
                "step": step,
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                **{k: float(v.detach()) for k, v in parts.items()},
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if validate is not None and cfg.validates_at(step):
                if rank == 0:
                    _validation_point(validate, model, step, epoch, out)
                if world_size > 1:
                    torch.distributed.barrier()  # the other ranks wait for rank 0's validation
            if (step % cfg.checkpoint_every == 0 or step == cfg.steps) and rank == 0:
                with atomic_path(out / CHECKPOINT) as tmp:
                    torch.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": step,
                            "rng": _rng_state(),
                            "config": cfg.resume_key() | {"device": cfg.device},
                        },
                        tmp,
                    )
    bar.close()
    if world_size > 1:
        torch.distributed.barrier()  # the caller saves the model once every rank is done
    return {"step": step, "done": step >= cfg.steps}


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint: a resumed run writes those steps again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def _trim_validation(out: Path, step: int) -> None:
    """Drop validation points past the checkpoint (their lines and rankings), as :func:`_trim_metrics`."""
    _trim_metrics(out / VALIDATION, step)
    folder = out / VALIDATION_RANKINGS
    if folder.is_dir():
        for path in folder.iterdir():
            match = re.fullmatch(r"step-(\d+)\.parquet", path.name)
            if match and int(match.group(1)) > step:
                path.unlink()


def read_validation(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The validation points kept in a checkpoint folder, in step order (none: an empty list)."""
    path = Path(folder) / VALIDATION
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
