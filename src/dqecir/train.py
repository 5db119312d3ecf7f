"""One training loop for every benchmark and every variant (baseline, +AW, +TRNS, full).

``train(config, out_dir)`` writes into ``out_dir``: ``config.yaml`` (the resolved config),
``log.jsonl`` (one JSON object per logged step, TRNS update and validation), ``last.safetensors``
(after every epoch, for ``--resume``) and ``best.safetensors`` (best validation headline metric).

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop runs data-parallel (:mod:`dqecir.distributed`):
each process takes its slice of every global batch of ``batch_size * world`` queries, in-batch
terms see every process's rows (gathered with gradients), TRNS pool scoring is split by query,
gradients are averaged, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dqecir.checkpoint import (
    Checkpoint,
    check_optimizer_shapes,
    host_rng_state,
    load_checkpoint,
    save_checkpoint,
)
from dqecir.config import Config, ConfigError, checkpoint_config
from dqecir.data.pipeline import (
    SplitFeatures,
    TrainQueries,
    build_features,
    build_train_queries,
    query_texts,
)
from dqecir.data.types import CIRSplit
from dqecir.device import resolve_device
from dqecir.distributed import DistEnv, epoch_batches, init_distributed, local_device, shutdown
from dqecir.errors import CheckpointError, DqecirError
from dqecir.evaluate import validate
from dqecir.mining import NegativeMiner
from dqecir.models.attribute import Lexicon, load_lexicon, text_labels, value_labels
from dqecir.models.cir import CIRModel, build_model
from dqecir.objective import DQECIRObjective, ObjectiveBatch
from dqecir.registry import get_benchmark
from dqecir.runlog import RunLog, drop_temporary_files, open_run_log, truncate_log
from dqecir.sampling import TRNSSchedule

log = logging.getLogger(__name__)


class TrainingDiverged(DqecirError):
    """The loss became NaN or infinite: the run stops before saving anything of it."""

    @classmethod
    def at(
        cls, out: Path, state: TrainState, epoch: int, vals: dict[str, float]
    ) -> TrainingDiverged:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
        kept = (
            f"{out / 'last.safetensors'} holds epoch {state.epoch}"
            if state.epoch
            else "no checkpoint was written"
        )
        return cls(
            f"training diverged at epoch {epoch + 1}, step {state.global_step}: "
            f"the loss is not finite ({terms}); stopped without saving this epoch ({kept}). "
            "Lower train.lr, check train.grad_clip, or look for broken data"
        )


# ---------------------------------------------------------------------------- set-up helpers
def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ConfigError(f"train.amp must be auto, bf16 or none, got {amp!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_splits(cfg: Config, split: str) -> list[CIRSplit]:
    """The splits of ``split`` the config's benchmark protocol loads (a grouped benchmark's
    ``data.categories``)."""
    from dqecir.data.formats import load_benchmark

    kw: dict[str, Any] = {"skip_missing": cfg.data.skip_missing}
    if get_benchmark(cfg.data.benchmark).groups is not None:
        kw["categories"] = cfg.data.categories
    return load_benchmark(cfg.data.benchmark, Path(cfg.data.root), split, **kw)


def resolve_headline(cfg: Config) -> Config:
    """``cfg`` with ``eval.headline`` set: as given, or the benchmark protocol's headline."""
    if cfg.eval.headline:
        return cfg
    headline = get_benchmark(cfg.data.benchmark).headline
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, headline=headline))


def fill_spell_words(cfg: Config, train_splits: Sequence[CIRSplit]) -> None:
    """With ``model.backbone_kwargs.text_spelling`` and no ``spell_words`` yet, set them to the
    words of the captions of ``train_splits`` (:func:`dqecir.data.spelling.domain_words`), so
    that the checkpoint's config carries the dictionary its queries are corrected towards."""
    kwargs = cfg.model.backbone_kwargs
    if not kwargs.get("text_spelling") or kwargs.get("spell_words"):
        return
    from dqecir.data.spelling import domain_words

    texts = [
        t
        for s in train_splits
        for q in s.queries
        for t in query_texts(q, True, max_variants=cfg.data.caption_variants)
    ]
    kwargs["spell_words"] = domain_words(texts)
    log.info("text_spelling: %d words of %d training texts", len(kwargs["spell_words"]), len(texts))


def ensure_data(cfg: Config) -> None:
    """Build the embedded benchmark the config names when its root does not exist yet."""
    root = Path(cfg.data.root)
    if not cfg.data.root:
        raise ConfigError("data.root is empty: set it in the config or pass --data-root")
    if root.exists() or not cfg.data.make:
        return
    from dqecir.data.synthetic import make_benchmark
    from dqecir.data.synthetic.writers import LAYOUTS

    make = dict(cfg.data.make)
    kind = make.pop("kind")
    # The config root points at one layout (e.g. <out>/cirr); the benchmark folder is its parent.
    out = root.parent if root.name in LAYOUTS else root
    log.info("building the %s benchmark in %s", kind, out)
    make_benchmark(kind, out, **make)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: Config, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(cfg.train.warmup_ratio * total_steps))
    kind = cfg.train.schedule
    if kind not in ("cosine", "onecycle", "constant"):
        raise ConfigError(f"train.schedule must be cosine, onecycle or constant, got {kind!r}")

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return max(0.0, 1.0 - t)  # one-cycle: linear ramp up then linear decay

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


PRETRAINED_PREFIXES = ("backbone.text_top.",)
"""Trainable weights that start from a pretrained tower (``train.lr_pretrained`` applies)."""


def make_optimizer(model: CIRModel, cfg: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; weights that start from a pretrained tower
    (the trained MiniLM top layers) take ``train.lr_pretrained`` when it is set, and no weight
    decay when ``train.anchor_decay`` is (they decay toward their start instead:
    :class:`AnchorDecay`)."""
    if cfg.train.anchor_decay < 0:
        raise ConfigError(f"train.anchor_decay must be >= 0, got {cfg.train.anchor_decay}")
    lr_pre = cfg.train.lr_pretrained or cfg.train.lr
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pre = name.startswith(PRETRAINED_PREFIXES)
        # Anchored pretrained weights decay toward their start (AnchorDecay), not toward zero.
        decay = p.dim() >= 2 and "temperature" not in name and not (pre and cfg.train.anchor_decay)
        buckets.setdefault((decay, pre), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.train.weight_decay if decay else 0.0,
         "lr": lr_pre if pre else cfg.train.lr}
        for (decay, pre), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas))


class AnchorDecay:
    """L2-SP in decoupled form (``train.anchor_decay``): after each optimizer step every weight
    that starts from a pretrained tower moves toward its starting value by
    ``lr * anchor_decay`` of the gap, as AdamW's weight decay moves weights toward zero. The
    anchors are taken when the model is built, i.e. the tower's shipped weights, also for a run
    that then starts from a checkpoint (``train.init_from``) or resumes."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, rate: float) -> None:
        self.rate = rate
        pre = {id(p) for n, p in model.named_parameters() if n.startswith(PRETRAINED_PREFIXES)}
        groups = [
            (g, [(p, p.detach().clone()) for p in g["params"] if id(p) in pre])
            for g in opt.param_groups
        ]
        self.groups = [(g, ps) for g, ps in groups if ps]

    @property
    def count(self) -> int:
        return sum(p.numel() for _, ps in self.groups for p, _ in ps)

    @torch.no_grad()
    def step(self) -> None:
        for g, ps in self.groups:
            f = g["lr"] * self.rate
            for p, anchor in ps:
                p.sub_(p - anchor, alpha=f)


# ---------------------------------------------------------------------------- the data
@dataclass
class TrainData:
    """What a run trains and validates on: the splits, their frozen features (through the
    feature cache), the training queries as index tensors and their attribute labels."""

    train_splits: list[CIRSplit]
    val_splits: list[CIRSplit]
    train_table: SplitFeatures
    val_table: SplitFeatures
    queries: TrainQueries
    lexicon: Lexicon | None
    text_labels: torch.Tensor
    """``[texts, A]`` lexicon labels of every training text (``L_attr``)."""
    text_offset: torch.Tensor
    """``[Q]``: each query reads its phrasings in turn from its own starting point (seeded)."""
    value_labels: torch.Tensor | None = None
    """``[texts, A]`` the value each training text names per attribute (-1: none), when the
    value term of ``L_attr`` is on (``loss.attr_value > 0``)."""

    def images(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Frozen features of training images ``rows`` (kept on the CPU), on ``device``."""
        return self.train_table.images[rows].to(device, non_blocking=True).float()


def load_train_data(
    cfg: Config,
    model: CIRModel,
    device: torch.device,
    dist: DistEnv,
    train_splits: Sequence[CIRSplit],
) -> TrainData:
    cache = (
        Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.data.root) / ".dqecir-cache"
    )
    bb, fb = model.backbone, cfg.train.feature_batch_size
    lexicon = load_lexicon(cfg.data.lexicon, cfg.data.root)
    val_splits = load_splits(cfg, cfg.data.val_split)
    with dist.main_first():  # the feature cache takes one writer at a time
        train_table = build_features(
            bb, train_splits, train=True, cache_dir=cache, device=device, batch_size=fb,
            max_variants=cfg.data.caption_variants,
        )  # fmt: skip
        val_table = build_features(
            bb, val_splits, train=False, cache_dir=cache, device=device, batch_size=fb
        )
    queries = build_train_queries(
        train_splits, train_table, cfg.data.random_caption_order, cfg.data.caption_variants
    )
    offset = torch.randint(
        0, 1 << 30, (len(queries),), generator=torch.Generator().manual_seed(cfg.train.seed)
    )
    labels = text_labels(lexicon, train_table.texts, model.attributes)
    values = None
    if cfg.loss.attr_value > 0 and cfg.model.attribute_weights != "none":
        if lexicon is None:
            raise ConfigError("loss.attr_value > 0 needs a lexicon (data.lexicon)")
        values = value_labels(lexicon, train_table.texts, model.attributes)
    return TrainData(
        train_splits, val_splits, train_table, val_table, queries, lexicon, labels, offset, values
    )


# ---------------------------------------------------------------------------- the trainer
@dataclass
class TrainState:
    epoch: int = 0
    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    trns_last_step: int = -1
    trns_updates: int = 0


@dataclass
class EpochSums:
    """Running sums of one epoch's step terms (their means go into the epoch record)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    trns_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, vals: dict[str, float]) -> None:
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.sums.items()}


class Trainer:
    """The loop: batches, the TRNS mining schedule, validation, checkpoints and the log. What
    a step minimises is :class:`~dqecir.objective.DQECIRObjective`'s."""

    def __init__(self, cfg: Config, out_dir: Path, dist: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist or DistEnv()
        self.device = local_device(resolve_device(cfg.train.device), self.dist)
        self.amp = autocast_dtype(cfg.train.amp, self.device)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.train.seed)
        with self.dist.main_first():
            ensure_data(cfg)
        train_splits = load_splits(cfg, cfg.data.train_split)
        fill_spell_words(cfg, train_splits)
        self.model = build_model(cfg.model, cfg.loss).to(self.device)
        self.dist.broadcast_parameters(self._trainable())
        self.data = load_train_data(cfg, self.model, self.device, self.dist, train_splits)
        self.queries = self.data.queries
        self.batches = epoch_batches(len(self.queries), cfg.train.batch_size, self.dist.world)
        self.steps_per_epoch = len(self.batches)  # ceil(queries / batch_size) in one process
        self.opt = make_optimizer(self.model, cfg)
        self.anchor = (
            AnchorDecay(self.model, self.opt, cfg.train.anchor_decay)
            if cfg.train.anchor_decay > 0
            else None
        )
        self.sched = make_scheduler(self.opt, cfg, self.steps_per_epoch * cfg.train.epochs)
        self.objective = DQECIRObjective(
            cfg.loss,
            self.queries.gts,
            trns=cfg.trns.enabled,
            negative_grad=cfg.trns.negative_grad,
            relevance_grad=cfg.trns.relevance_grad,
            dist=self.dist,
        )
        t = cfg.trns
        self.schedule = TRNSSchedule(t.warmup_epochs, t.update_interval, t.interval_unit)
        self.miner = NegativeMiner(
            self.data.train_table, self.queries, t, cfg.eval.batch_size, self.device, self.dist
        )
        self.negatives = torch.full((len(self.queries), t.k), -1, dtype=torch.long)
        self.state = TrainState()
        self.log: RunLog = open_run_log(
            self.out, main=self.dist.is_main, tensorboard=cfg.train.tensorboard
        )

    # -- helpers ---------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp)

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _tau(self) -> float:
        return float(self.model.temperature().detach())

    # -- TRNS --------------------------------------------------------------------------
    def mine(self) -> dict[str, float]:
        """New negative sets for every training query; returns the mining statistics."""
        seed = self.cfg.train.seed * 1000 + self.state.trns_updates
        self.negatives, stats = self.miner.mine(self.model, self._tau(), seed, amp=self.amp)
        self.state.trns_last_step = self.state.global_step
        self.state.trns_updates += 1
        self.model.train()
        return stats

    # -- one step ------------------------------------------------------------------------
    def step_losses(self, b: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Loss terms of the batch ``b`` (the global batch under torchrun: this process encodes
        its share of the rows, see :mod:`dqecir.objective`)."""
        batch = self.objective_batch(b)
        with self._autocast():
            return self.objective(self.model, batch)

    def objective_batch(self, b: torch.Tensor, distinct_negatives: bool = True) -> ObjectiveBatch:
        """This process's share of batch ``b`` as the objective reads it. TRNS negatives repeat
        across a batch's queries (mined from one pool): each distinct image is passed, and then
        encoded, once; ``distinct_negatives=False`` passes one row per slot (the way before,
        kept for benchmarks/trns_step.py)."""
        qz, data = self.queries, self.data
        choice = qz.options_of_epoch(b, self.state.epoch, data.text_offset)
        trows_all, mine = qz.text[b, choice], self.dist.share(len(b))
        rows, trows = b[mine], trows_all[mine]
        batch = ObjectiveBatch(
            reference=data.images(qz.reference[rows], self.device),
            text={k: v.to(self.device) for k, v in data.train_table.text_batch(trows).items()},
            target=data.images(qz.target[rows], self.device),
            queries=b,
            targets=qz.target[b],
            labels=data.text_labels[trows_all].to(self.device),
            offset=mine.start,
        )
        if data.value_labels is not None:
            batch.values = data.value_labels[trows_all].to(self.device)
        if self.objective.uses_negatives and self.state.trns_updates > 0:
            batch.negatives = self.negatives[rows]
            slots = batch.negatives.clamp(min=0).flatten()
            if distinct_negatives:
                slots, batch.negative_index = torch.unique(slots, return_inverse=True)
            batch.negative_feats = data.images(slots, self.device)
        return batch

    def _step(self, b: torch.Tensor, gen: torch.Generator) -> tuple[dict[str, float], float]:
        """One optimizer step on batch ``b``; returns its terms (the mean over processes) and
        its seconds. Under torchrun each process's loss is weighted by its share of the batch
        and gradients are averaged (:meth:`~dqecir.objective.DQECIRObjective.process_weight`)."""
        t0 = time.perf_counter()
        terms = self.step_losses(b, gen)
        self.opt.zero_grad(set_to_none=True)
        if self.dist.active:
            (terms["loss"] * self.objective.process_weight(len(b))).backward()
            self.dist.average_gradients(self._trainable())
        else:
            terms["loss"].backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._trainable(), self.cfg.train.grad_clip)
        self.opt.step()
        if self.anchor is not None:
            self.anchor.step()
        self.sched.step()
        self.state.global_step += 1
        dt = time.perf_counter() - t0
        vals = {k: float(v.detach()) for k, v in terms.items()}
        return self.dist.weighted_mean(vals, _size(self.dist.share(len(b)))), dt

    # -- evaluation --------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics (computed by rank 0, handed to every process)."""
        if not self.dist.is_main:
            return self.dist.broadcast_object(None)
        metrics = validate(
            self.model, self.data.val_splits, self.data.val_table, self.device,
            batch_size=self.cfg.eval.batch_size, topk=self.cfg.eval.topk,
        )  # fmt: skip
        self.model.train()
        return self.dist.broadcast_object(metrics)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, name: str, metrics: dict[str, float] | None = None) -> Path:
        path = self.out / name
        if not self.dist.is_main:
            return path
        meta = {
            "config": self.cfg.to_dict(),
            "preprocess": self.model.backbone.preprocess.to_dict(),
            "backbone_config": self.model.backbone.config(),
            "state": self.state.__dict__,
            "metrics": metrics or {},
            **host_rng_state(),
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.dist.world,
        }
        save_checkpoint(
            path,
            model_state=self.model.trainable_state_dict(),
            meta=meta,
            optimizer=self.opt,
            scheduler=self.sched,
            extra_tensors={"trns.negatives": self.negatives},
        )
        return path

    def resume(self, path: Path) -> None:
        ck = load_checkpoint(path)
        check_resumable(ck, self.cfg, self.dist.world)
        try:
            self._restore(ck)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise CheckpointError(
                f"checkpoint {ck.path}: cannot resume from it ({type(e).__name__}: {e}); "
                "it does not hold the state this run's config needs"
            ) from e
        log.info("resumed from %s at epoch %d, step %d", ck.path, self.state.epoch,
                 self.state.global_step)  # fmt: skip

    def warm_start(self, path: Path) -> None:
        """Start the trainable weights from the checkpoint ``path`` (``train.init_from``):
        every backbone weight must be there with its shape; the model's own heads load where
        the checkpoint holds them and keep their fresh initialisation where it does not.
        Optimizer, schedule, loop state and TRNS negatives stay fresh. What was loaded, left
        fresh and ignored goes to the log (an ``init`` record)."""
        ck = load_checkpoint(path)
        where = f"train.init_from {ck.path}"
        saved = ck.meta["config"].get("model", {}).get("backbone")
        if saved != self.cfg.model.backbone:
            raise CheckpointError(
                f"{where}: a {saved!r} backbone's checkpoint, this run trains "
                f"{self.cfg.model.backbone!r}"
            )
        sd = ck.model_state
        try:
            heads = self.model.load_trainable_state_dict(sd, partial_heads=True)
        except (CheckpointError, KeyError) as e:
            why = e.args[0] if isinstance(e, KeyError) else e
            raise CheckpointError(f"{where}: {why} (another fusion or size?)") from e
        n_bb = sum(k.startswith("backbone.") for k in sd)
        log.info("started from %s: %d backbone weights, heads %s loaded, %s fresh%s", ck.path,
                 n_bb, heads["loaded"] or "none", heads["fresh"] or "none",
                 f", {heads['ignored']} not used" if heads["ignored"] else "")  # fmt: skip
        self.log.write({"event": "init", "from": str(ck.path), "backbone_weights": n_bb, **heads})

    def _restore(self, ck: Checkpoint) -> None:
        """Weights, optimizer, scheduler, loop state, TRNS negatives and RNG from ``ck``; any
        missing or misshapen piece raises (KeyError, ValueError...) before the loop starts."""
        self.model.load_trainable_state_dict(
            {k: v.to(self.device) for k, v in ck.model_state.items()}
        )
        opt_state = ck.optimizer_state()
        if opt_state is not None:
            check_optimizer_shapes(self.opt, opt_state)
            self.opt.load_state_dict(opt_state)
        if "scheduler" in ck.meta:
            self.sched.load_state_dict(ck.meta["scheduler"])
        self.state = TrainState(**ck.meta["state"])
        negatives = ck.tensors["trns.negatives"]
        if tuple(negatives.shape) != tuple(self.negatives.shape):
            raise ValueError(
                f"trns.negatives has shape {tuple(negatives.shape)}, this run needs "
                f"{tuple(self.negatives.shape)}"
            )
        self.negatives = negatives.clone()
        ck.restore_rng()

    def _diverged(self, epoch: int, vals: dict[str, float]) -> None:
        self.log.write({"event": "diverged", "epoch": epoch, "step": self.state.global_step,
                        **{k: v if math.isfinite(v) else str(v) for k, v in vals.items()}})  # fmt: skip
        raise TrainingDiverged.at(self.out, self.state, epoch, vals)

    # -- the loop ----------------------------------------------------------------------
    def _max_steps_reached(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.state.global_step >= self.cfg.train.max_steps

    def fit(self, stop_after_epoch: int = 0) -> Path:
        """Train until ``train.epochs`` (or ``train.max_steps``, or ``stop_after_epoch``);
        returns the path of the best checkpoint."""
        self.model.train()
        while self.state.epoch < self.cfg.train.epochs:
            sums = self._train_epoch()
            self._end_epoch(sums)
            if self._max_steps_reached():
                break
            if stop_after_epoch and self.state.epoch >= stop_after_epoch:
                break
        if not (self.out / "best.safetensors").exists():
            self.save("best.safetensors")
        return self.out / "best.safetensors"

    def _train_epoch(self) -> EpochSums:
        """One pass over the training queries in this epoch's (seeded) order, mining TRNS
        negatives where the schedule says so."""
        cfg, epoch = self.cfg, self.state.epoch
        gen = torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch)
        perm = torch.randperm(len(self.queries), generator=gen)
        bar = tqdm(
            range(self.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            leave=False, mininterval=1.0, disable=not self.dist.is_main,
        )  # fmt: skip
        sums = EpochSums()
        for i in bar:
            if self.objective.uses_negatives and self.schedule.due(
                epoch, self.state.global_step, self.steps_per_epoch, self.state.trns_last_step
            ):
                stats = self.mine()
                sums.trns_seconds += stats["total_seconds"]
                self.log.write({"event": "trns", "epoch": epoch, "step": self.state.global_step,
                                "tau": self._tau(), **stats})  # fmt: skip
            b = perm[slice(*self.batches[i])]
            vals, dt = self._step(b, gen)
            if not math.isfinite(vals["loss"]):  # the same on every process
                self._diverged(epoch, vals)
            sums.add(vals)
            bar.set_postfix(loss=f"{vals['loss']:.4f}", sps=f"{len(b) / dt:.0f}")
            if self.state.global_step % cfg.train.log_every == 0 or i == self.steps_per_epoch - 1:
                self.log.write({"event": "step", "epoch": epoch, "step": self.state.global_step,
                                "lr": self.sched.get_last_lr()[0], "tau": self._tau(),
                                "samples_per_s": len(b) / dt, **vals})  # fmt: skip
            if self._max_steps_reached():
                break
        return sums

    def _end_epoch(self, sums: EpochSums) -> None:
        """Validate (every ``eval_every`` epochs and after the last), log the epoch, save
        ``best`` when the headline metric improved and ``last`` always."""
        cfg, epoch = self.cfg, self.state.epoch
        epoch_seconds = time.perf_counter() - sums.started
        self.state.epoch += 1
        headline = cfg.eval.headline
        metrics: dict[str, float] = {}
        if self.state.epoch % cfg.train.eval_every == 0 or self.state.epoch == cfg.train.epochs:
            metrics = self.validate()
            if headline not in metrics:
                raise ConfigError(
                    f"eval.headline={headline!r} is not among the validation metrics "
                    f"{sorted(metrics)[:12]}..."
                )
        means = sums.means()
        self.log.write({"event": "epoch", "epoch": epoch, "step": self.state.global_step,
                        "epoch_seconds": epoch_seconds, "trns_seconds": sums.trns_seconds,
                        "train": means, "val": metrics})  # fmt: skip
        (log.info if self.dist.is_main else log.debug)(
            "epoch %d/%d loss %.4f val %s=%s (%.1fs)", self.state.epoch, cfg.train.epochs,
            means.get("loss", float("nan")), headline, metrics.get(headline, "-"), epoch_seconds,
        )  # fmt: skip
        if metrics and metrics[headline] > self.state.best:
            self.state.best = metrics[headline]
            self.state.best_epoch = self.state.epoch
            self.save("best.safetensors", metrics)
        self.save("last.safetensors", metrics)


def check_resumable(ck: Checkpoint, cfg: Config, world: int) -> None:
    """A run resumes only with the config and the number of processes that wrote ``ck``."""
    saved = checkpoint_config(ck.meta["config"])
    was = int(ck.meta.get("world_size", 1))
    if was != world:
        raise CheckpointError(
            f"checkpoint {ck.path} was written by a run of {was} process(es), this one has "
            f"{world}: the global batch and the schedule would change; resume with "
            f"{was} process(es) in all"
        )
    for section in ("model", "data", "loss", "trns"):
        if getattr(saved, section) != getattr(cfg, section):
            raise CheckpointError(
                f"checkpoint {ck.path}: its {section} config differs from this run's; "
                "resume with the run's own config.yaml"
            )


def _size(s: slice) -> int:
    return s.stop - s.start


def train(
    cfg: Config | None, out_dir: Path, *, resume: bool = False, stop_after_epoch: int = 0
) -> Path:
    """Train with ``cfg`` into ``out_dir`` (or, with ``resume`` and ``cfg=None``, continue the
    run there with its own config); returns the path of the best checkpoint."""
    out = Path(out_dir)
    if resume:
        if cfg is not None:
            raise ConfigError("resume=True continues the run with its own config: pass cfg=None")
        last = out / "last.safetensors"
        if not last.exists():
            raise CheckpointError(f"--resume: {last} does not exist")
        cfg = checkpoint_config(load_checkpoint(last).meta["config"])
    elif cfg is None:
        raise ConfigError("train: a config is needed unless resuming")
    cfg = resolve_headline(cfg)
    out.mkdir(parents=True, exist_ok=True)
    env = init_distributed(cfg.train.device)  # a single process unless under torchrun
    try:
        if env.is_main:
            drop_temporary_files(out)
            if not resume:
                (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
            (out / "config.yaml").write_text(cfg.to_yaml())
        trainer = Trainer(cfg, out, dist=env)
        if env.is_main and cfg.model.backbone_kwargs.get("spell_words"):
            (out / "config.yaml").write_text(cfg.to_yaml())  # with the words the trainer filled
        try:
            if resume:
                trainer.resume(out / "last.safetensors")
                if env.is_main:
                    truncate_log(out / "log.jsonl", trainer.state.epoch)
            elif cfg.train.init_from:
                trainer.warm_start(Path(cfg.train.init_from))
            return trainer.fit(stop_after_epoch=stop_after_epoch)
        finally:
            trainer.log.close()
    finally:
        shutdown(env)
