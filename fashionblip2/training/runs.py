"""The paper's training runs, built from the library pieces: pretraining of the embedded default's
backbone, stage 1 on FACap, stage 2 on FashionIQ. The workflow scripts call these.

A run folder holds the final model (``save_pretrained``), its tokenizer, ``metrics.jsonl`` and
``training.json`` (what was trained, on what, with which settings): it is all ``fashionblip2 search``
and the evaluation need. Checkpoints live in a separate folder (the rule's outputs are deleted by
Snakemake before a rerun; the checkpoint must survive to resume). One run at a time writes a
checkpoint folder: :func:`hold_checkpoints` puts a lock in it naming the holder (host, process,
SLURM job), and a second run refuses the folder while that holder lives.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fashionblip2.common.io import atomic_directory, dumps_json
from fashionblip2.common.runtime import resolve_device
from fashionblip2.config import VARIANT_DEFAULTS
from fashionblip2.datasets.triplets import Triplets
from fashionblip2.model import FashionBLIP2
from fashionblip2.model.configuration import MATCHING
from fashionblip2.model.processing import ImageStore
from fashionblip2.model.tokenization import tokenize
from fashionblip2.training.trainer import METRICS, TrainConfig, train

log = logging.getLogger(__name__)
LOSSES = ("cir", "ctr")
LOCK = "holder.json"
# SLURM job states after which a job holds nothing (squeue's %T).
FINISHED_JOB_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "REVOKED", "TIMEOUT"}
)  # fmt: skip
_held: set[Path] = set()  # the checkpoint folders this process holds


class CheckpointBusy(RuntimeError):
    """Another live run holds the checkpoint folder."""


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _slurm_job_live(job_id: str) -> bool | None:
    """Whether SLURM still holds the job (None: SLURM cannot be asked from here)."""
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # squeue says "Invalid job id specified" once a job is purged: it holds nothing.
        return False if "invalid job id" in result.stderr.lower() else None
    states = result.stdout.split()
    return bool(states) and states[0] not in FINISHED_JOB_STATES


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the run named in a lock can still write: its SLURM job is live, or (without one, or
    where SLURM cannot be asked) its process runs on this host. A holder on another host that cannot
    be checked counts as alive: refusing is safe, racing is not."""
    me = _me()
    if holder.get("slurm_job_id"):
        if holder["slurm_job_id"] == me["slurm_job_id"]:
            return holder.get("pid") != me["pid"] and holder.get("host") == me["host"] and _pid_alive(holder["pid"])
        live = _slurm_job_live(str(holder["slurm_job_id"]))
        if live is not None:
            return live
    if holder.get("host") == me["host"]:
        return holder.get("pid") != me["pid"] and _pid_alive(int(holder.get("pid", 0)))
    return True


def hold_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> None:
    """Take the checkpoint folder for this process (until :func:`save_run` removes it, or the process
    ends: a dead holder's lock is stale and taken over). Raises CheckpointBusy, naming the holder,
    when another live run holds it. Under data parallelism only rank 0 takes it."""
    from fashionblip2.training.distributed import world

    folder = Path(checkpoint_dir).resolve()
    if world()[0] != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}  # half-written by a holder killed mid-write, or removed meanwhile
            if holder == _me():  # this process's already (a resumed call in the same process)
                _held.add(folder)
                return
            if holder and holder_alive(holder):
                raise CheckpointBusy(
                    f"{folder} is held by another live run (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"SLURM job {holder.get('slurm_job_id') or 'none'}); two runs must never write one "
                    "checkpoint folder. Wait for it or cancel it, then run again."
                ) from None
            # Stale: moved aside under a name of our own, so that of two runs finding it stale at
            # once only one takes it over (the other retries and finds the new holder).
            aside = lock.with_name(f"{LOCK}.stale.{os.getpid()}")
            try:
                os.replace(lock, aside)
                aside.unlink()
                log.warning("taking over %s from a holder that is gone: %s", folder, holder)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_me(), f)
        _held.add(folder)
        return
    raise CheckpointBusy(f"{folder}: could not take its lock (other runs keep taking it)")


@dataclass
class Variant:
    """One model of the experiment grid (declared once in config under ``experiments.variants``);
    build it with :meth:`from_spec`, which fills the keys a variant may leave out."""

    losses: list[str]
    adapters: bool
    matching: str
    facap_fraction: float  # 0: no FACap stage; stage 2 starts from the pretrained backbone
    # A FACap subset trains for as many "epochs" as the full set (steps scaled by the fraction, as
    # "increasing subsets" implies), or for as many "steps" (the subset is seen more often).
    fraction_budget: str
    # Stage 1 on the filtered FACap (when facap.filters is set); false for Table 6's unfiltered twins.
    # The workflow hands the right folder to the trainer; this records which one it was.
    facap_filtered: bool
    label: str

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Variant:
        """A variant from its config entry: losses, adapters and matching as declared, the optional
        keys from their one default (fashionblip2.config.VARIANT_DEFAULTS)."""
        return cls(**{**VARIANT_DEFAULTS, **spec})

    def __post_init__(self):
        unknown = set(self.losses) - set(LOSSES)
        if unknown or "cir" not in self.losses:
            raise ValueError(f"losses must include cir and be among {LOSSES}, not {self.losses}")
        if self.matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, not {self.matching!r}")
        if not 0 <= self.facap_fraction <= 1:
            raise ValueError(f"facap_fraction must be in [0, 1], not {self.facap_fraction}")
        if self.fraction_budget not in ("epochs", "steps"):
            raise ValueError(f"fraction_budget must be 'epochs' or 'steps', not {self.fraction_budget!r}")

    def stage1_steps(self, steps: int, used: int, full: int) -> int:
        """Stage-1 steps on ``used`` of the ``full`` FACap triplets: the full set's epochs, or its steps."""
        if self.fraction_budget == "steps" or used >= full:
            return steps
        return max(1, math.ceil(steps * used / full))


@dataclass
class ModelSettings:
    """Sizes of the FashionBLIP-2 heads and text input (model.<key> in config; the paper: 12 heads of
    256, factor 16, 128 tokens). ``similarity_scale``: how the head cosines combine, the mean
    ("per_head", one temperature fits global and multi-head alike) or their sum; None for global
    matching, whose one head makes it meaningless (and which does not pass it: fashionblip2.config)."""

    adapter_factor: int
    num_heads: int
    head_dim: int
    max_text_length: int
    similarity_scale: str | None
    init_temperature: float  # the temperature's start when the heads are created (model.init_temperature)
    image_mode: str  # images.mode: where the images become RGB, saved in the model's config

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModelSettings:
        return cls(**{"similarity_scale": None, **params})


class ImageFeatureCache:
    """Image-encoder outputs, computed once per image when the encoder is frozen (stage 2, and stage 1
    without adapters): the frozen encoder gives the same output every epoch, so running it again
    would only spend time. Computed without gradients, in eval mode, in batches."""

    def __init__(self, model: FashionBLIP2, store: ImageStore, batch_size: int = 64):
        self.model = model
        self.store = store
        self.batch_size = batch_size
        self._features: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, keys: Sequence[str], device: torch.device) -> torch.Tensor:
        todo = [k for k in dict.fromkeys(keys) if k not in self._features]
        vision = self.model.backbone.vision_model
        was_training = vision.training
        vision.eval()
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            out = self.model.image_features(self.store.pixels(chunk).to(device))
            self._features.update(zip(chunk, out.float().cpu(), strict=True))
        vision.train(was_training)
        return torch.stack([self._features[k] for k in keys]).to(device)


def build_model(start: str | os.PathLike[str], variant: Variant, settings: ModelSettings, stage: int) -> FashionBLIP2:
    """Stage 1 (or stage 2 of a variant without FACap): a BLIP-2 checkpoint with fresh adapters and
    heads. Stage 2 after stage 1: the stage-1 model as saved."""
    config = json.loads((Path(start) / "config.json").read_text())
    if config.get("model_type") == "fashionblip2":
        model = FashionBLIP2.from_pretrained(start)
    else:
        model = FashionBLIP2.from_pretrained(
            start,
            use_adapters=variant.adapters,
            matching=variant.matching,
            adapter_factor=settings.adapter_factor,
            num_heads=settings.num_heads,
            head_dim=settings.head_dim,
            max_text_length=settings.max_text_length,
            init_temperature=settings.init_temperature,
            image_mode=settings.image_mode,
            # Global matching leaves it to the model's own (meaningless with one head).
            **({"similarity_scale": settings.similarity_scale} if settings.similarity_scale else {}),
        )
    model.set_stage(stage)
    return model


def cir_training_batches(
    model: FashionBLIP2,
    data: Triplets,
    store: ImageStore,
    tokenizer,
    *,
    with_captions: bool,
    randomise: bool,
    text_cleanup: str,
    seed: int,
    device: torch.device,
    cache_features: bool = True,
):
    """``make_batch`` and ``loss_fn`` for the trainer: CIR (and CTR) on triplets. Texts are drawn
    with a generator seeded by (seed, step, index): a resumed run draws the same texts.
    ``text_cleanup`` (config ``text.cleanup``) applies to the query texts (the modification text,
    FashionIQ's captions) as SPRC applies it; the target captions of CTR (which SPRC has not) stay as they are.
    ``cache_features``: keep a frozen encoder's outputs in memory (off at paper scale: ViT-g
    outputs of 25k images would take about 36 GB)."""
    max_len = model.config.max_text_length
    features = None
    if model.image_encoder_frozen and cache_features:
        features = ImageFeatureCache(model, store)
        # All at once, in a fixed order: a feature must not depend on which batch first needed it
        # (batch composition changes the last bits of a matmul), or a resumed run would drift.
        features(sorted(set(data.reference) | set(data.target)), device)

    def make_batch(indices: Sequence[int], step: int) -> dict[str, Any]:
        texts = [
            data.training_text(i, random.Random(f"{seed}/{step}/{i}"), randomise, cleanup=text_cleanup) for i in indices
        ]
        ids, mask = tokenize(tokenizer, texts, max_len)
        refs, tgts = [data.reference[i] for i in indices], [data.target[i] for i in indices]
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if features is None:
            batch |= {"reference_pixels": store.pixels(refs), "target_pixels": store.pixels(tgts)}
        else:
            batch |= {"reference_embeds": features(refs, device), "target_embeds": features(tgts, device)}
        if with_captions:
            batch["caption_ids"], batch["caption_mask"] = tokenize(
                tokenizer, [data.target_caption[i] for i in indices], max_len
            )
        return batch

    def loss_fn(m: FashionBLIP2, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return m(
            batch.get("reference_pixels"),
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("target_pixels"),
            batch.get("caption_ids"),
            batch.get("caption_mask"),
            reference_embeds=batch.get("reference_embeds"),
            target_embeds=batch.get("target_embeds"),
        )

    return make_batch, loss_fn


def train_cir(
    model: FashionBLIP2,
    data: Triplets,
    store: ImageStore,
    tokenizer,
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike[str],
    *,
    with_captions: bool,
    randomise: bool,
    text_cleanup: str,
    cache_features: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    validate: Callable[[torch.nn.Module, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Stage 1 or 2: CIR (and CTR) training on triplets (:func:`cir_training_batches`), validated by
    ``validate`` (a :class:`fashionblip2.training.validation.FashionIQValidator`) if given."""
    if with_captions and data.target_caption is None:
        raise ValueError("CTR needs target captions; this dataset has none (FashionIQ: use losses [cir])")
    from fashionblip2.training.distributed import init_from_env

    device = init_from_env(resolve_device(cfg.device, "training.device"))  # this rank's device under torchrun
    hold_checkpoints(checkpoint_dir)
    make_batch, loss_fn = cir_training_batches(
        model,
        data,
        store,
        tokenizer,
        with_captions=with_captions,
        randomise=randomise,
        text_cleanup=text_cleanup,
        seed=cfg.seed,
        device=device,
        cache_features=cache_features,
    )
    return train(
        model,
        len(data),
        make_batch,
        loss_fn,
        cfg,
        checkpoint_dir,
        progress=progress,
        stop_after=stop_after,
        validate=validate,
    )


def save_run(
    model: torch.nn.Module,
    tokenizer,
    out_dir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    info: dict[str, Any],
) -> None:
    """Write the run folder whole (atomically), then drop the checkpoint it no longer needs.
    Under data parallelism only rank 0 writes. A run that trained into `checkpoint_dir` (it holds
    it) must find its ``metrics.jsonl`` there: a folder emptied or removed under it stops the run
    instead of writing a model without its metrics."""
    from fashionblip2.training.distributed import world

    if world()[0] != 0:
        return
    folder = Path(checkpoint_dir).resolve()
    metrics = folder / METRICS
    if folder in _held:
        lock = folder / LOCK
        holder = json.loads(lock.read_text(encoding="utf-8")) if lock.exists() else None
        if holder != _me() or not metrics.exists():
            raise CheckpointBusy(
                f"{folder} changed under this run (its lock is now {holder}, {METRICS} "
                f"{'exists' if metrics.exists() else 'is missing'}): another run wrote it; nothing saved"
            )
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if metrics.exists():
            shutil.copyfile(metrics, tmp / METRICS)
        (tmp / "training.json").write_text(dumps_json(info), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    _held.discard(folder)


def run_info(
    stage: str, variant: Variant | None, cfg: TrainConfig, data: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "stage": stage,
        "variant": asdict(variant) if variant is not None else None,
        "training": asdict(cfg),
        "data": data,
        **extra,
    }


def train_backbone(
    model: torch.nn.Module,
    keys: list[str],
    texts: list[str],
    store: ImageStore,
    tokenizer,
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike[str],
    *,
    max_text_length: int,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Image-text contrastive pretraining (:class:`Blip2ImageTextContrastive`) on (image, text) pairs."""

    def make_batch(indices: Sequence[int], step: int) -> dict[str, torch.Tensor]:
        ids, mask = tokenize(tokenizer, [texts[i] for i in indices], max_text_length)
        return {"pixel_values": store.pixels([keys[i] for i in indices]), "input_ids": ids, "attention_mask": mask}

    def loss_fn(m, batch):
        return m(**batch)

    hold_checkpoints(checkpoint_dir)
    return train(model, len(keys), make_batch, loss_fn, cfg, checkpoint_dir, progress=progress, stop_after=stop_after)


def train_config(run: dict[str, Any], common: dict[str, Any], *, seed: int | None = None) -> TrainConfig:
    """A run's TrainConfig from config: its own section (steps, lr, ...) plus the shared keys.

    ``validate_every`` is 0 where the section has none (the pretraining run never validates).
    ``seed``, when given, is the run's seed (a training script's ``--seed``: one run of several
    seeds), whatever the sections say; without it, the sections must give one."""
    keys = ("seed", "device", "precision", "gradient_checkpointing", "weight_decay_exempt")
    shared = {k: common[k] for k in keys if k in common}
    fields = {"validate_every": 0, **run, **shared}
    if seed is not None:
        fields["seed"] = seed
    if "seed" not in fields:
        raise ValueError("no seed: the training settings give none and none was passed (--seed)")
    return TrainConfig(**fields)
