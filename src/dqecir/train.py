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

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dqecir.checkpoint import load_checkpoint, save_checkpoint
from dqecir.config import Config, ConfigError, config_from_dict
from dqecir.data.pipeline import (
    SplitFeatures,
    TrainQueries,
    build_features,
    build_train_queries,
)
from dqecir.data.types import CIRSplit
from dqecir.device import resolve_device
from dqecir.distributed import DistEnv, epoch_batches, init_distributed, local_device, shutdown
from dqecir.errors import CheckpointError, DqecirError
from dqecir.evaluate import embed_gallery, merge_metrics, rank_split, score_split
from dqecir.files import atomic_write
from dqecir.losses import ITCLoss, MarginRank, RelevanceKL
from dqecir.models.attribute import AttributeLoss, Lexicon
from dqecir.models.cir import CIRModel, build_model
from dqecir.sampling import Exclusions, TRNSSchedule, ZoneSpec, mine_negatives
from dqecir.similarity import pooled, similarity

log = logging.getLogger(__name__)


class TrainingDiverged(DqecirError):
    """The loss became NaN or infinite: the run stops before saving anything of it."""


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
    from dqecir.data.formats import load_benchmark

    kw: dict[str, Any] = {"skip_missing": cfg.data.skip_missing}
    if cfg.data.benchmark == "fashioniq":
        kw["categories"] = cfg.data.categories
    return load_benchmark(cfg.data.benchmark, Path(cfg.data.root), split, **kw)


def ensure_data(cfg: Config) -> None:
    """Build the embedded benchmark the config names when its root does not exist yet."""
    root = Path(cfg.data.root)
    if not cfg.data.root:
        raise ConfigError("data.root is empty: set it in the config or pass --data-root")
    if root.exists() or not cfg.data.make:
        return
    from dqecir.data.synthetic import make_benchmark

    make = dict(cfg.data.make)
    kind = make.pop("kind")
    # The config root points at one layout (e.g. <out>/cirr); the benchmark folder is its parent.
    out = root.parent if root.name in ("cirr", "circo") else root
    log.info("building the %s benchmark in %s", kind, out)
    make_benchmark(kind, out, **make)


def load_lexicon(spec: str, root: str | Path = "") -> Lexicon | None:
    """The attribute lexicon ``spec`` names: ``benchmark`` (the ``lexicon.yaml`` an embedded
    benchmark writes into its layout folder ``root``: its train phrasing only), a name under
    ``dqecir/lexicons`` or a YAML path; None for an empty spec."""
    if not spec:
        return None
    import yaml

    if spec == "benchmark":
        path = Path(root) / "lexicon.yaml"
    else:
        path = Path(spec)
        if not path.suffix:
            path = Path(__file__).parent / "lexicons" / f"{spec}.yaml"
    if not path.is_file():
        raise ConfigError(f"lexicon {spec!r}: no file {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"lexicon {path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"lexicon {path}: expected attribute -> value -> phrases")
    return Lexicon(data)


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
    (the trained MiniLM top layers) take ``train.lr_pretrained`` when it is set."""
    lr_pre = cfg.train.lr_pretrained or cfg.train.lr
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and "temperature" not in name
        pre = name.startswith(PRETRAINED_PREFIXES)
        buckets.setdefault((decay, pre), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.train.weight_decay if decay else 0.0,
         "lr": lr_pre if pre else cfg.train.lr}
        for (decay, pre), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas))


class JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class NullLog:
    """The log of a process that is not rank 0: records are dropped (rank 0 writes them)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog:
    """Every record also as TensorBoard scalars at its global step (``train.tensorboard``):
    ``train/<term>`` (step records), ``trns/<statistic>``, ``val/<metric>`` and
    ``epoch/<term>`` (epoch records). The ``tensorboard`` package is imported only here."""

    def __init__(self, inner: JsonlLog, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                "train.tensorboard is true but the tensorboard package is not installed: "
                "pip install 'dqecir[tensorboard]' (or set train.tensorboard=false)"
            ) from e
        self.inner = inner
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict[str, Any]) -> None:
        self.inner.write(record)
        step = int(record.get("step", 0))
        event = record.get("event")
        groups = {"step": [("train", record)], "trns": [("trns", record)],
                  "epoch": [("val", record.get("val") or {}), ("epoch", record.get("train") or {}),
                            ("time", record)]}.get(event, [])  # fmt: skip
        for prefix, values in groups:
            for key, value in values.items():
                if key in ("event", "epoch", "step") or isinstance(value, (bool, dict)):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
        if event == "epoch":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- the trainer
@dataclass
class TrainState:
    epoch: int = 0
    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    trns_last_step: int = -1
    trns_updates: int = 0


class Trainer:
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
        self.model = build_model(cfg.model, cfg.loss).to(self.device)
        self.dist.broadcast_parameters(self._trainable())
        self.lexicon = load_lexicon(cfg.data.lexicon, cfg.data.root)
        cache = (
            Path(cfg.data.cache_dir)
            if cfg.data.cache_dir
            else Path(cfg.data.root) / ".dqecir-cache"
        )
        bb = self.model.backbone
        fb = cfg.train.feature_batch_size
        self.train_splits = load_splits(cfg, cfg.data.train_split)
        self.val_splits = load_splits(cfg, cfg.data.val_split)
        with self.dist.main_first():  # the feature cache takes one writer at a time
            self.train_table = build_features(
                bb, self.train_splits, train=True, cache_dir=cache, device=self.device,
                batch_size=fb, max_variants=cfg.data.caption_variants,
            )  # fmt: skip
            self.val_table = build_features(
                bb, self.val_splits, train=False, cache_dir=cache, device=self.device,
                batch_size=fb,
            )  # fmt: skip
        self.queries: TrainQueries = build_train_queries(
            self.train_splits, self.train_table, cfg.data.random_caption_order,
            cfg.data.caption_variants,
        )  # fmt: skip
        # each query reads its phrasings in turn from its own starting point (seeded)
        self._text_offset = torch.randint(
            0,
            1 << 30,
            (len(self.queries),),
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        self.text_labels = self._text_labels(self.train_table)
        self.batches = epoch_batches(len(self.queries), cfg.train.batch_size, self.dist.world)
        self.steps_per_epoch = len(self.batches)  # ceil(queries / batch_size) in one process
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.opt = make_optimizer(self.model, cfg)
        self.sched = make_scheduler(self.opt, cfg, self.total_steps)
        self.itc = ITCLoss()
        self.kl = RelevanceKL(cfg.loss.tau_soft)
        self.rank = MarginRank()
        self.attr = AttributeLoss(cfg.loss.attr_bce, cfg.loss.attr_nce)
        self.schedule = TRNSSchedule(
            cfg.trns.warmup_epochs, cfg.trns.update_interval, cfg.trns.interval_unit
        )
        self.zone = ZoneSpec(
            cfg.trns.zone, cfg.trns.zlow, cfg.trns.zhigh, cfg.trns.low, cfg.trns.high,
            cfg.trns.qlow, cfg.trns.qhigh,
        )  # fmt: skip
        self.negatives = torch.full((len(self.queries), cfg.trns.k), -1, dtype=torch.long)
        self.state = TrainState()
        self.log: JsonlLog | NullLog | TensorBoardLog = NullLog()
        if self.dist.is_main:
            self.log = JsonlLog(self.out / "log.jsonl")
            if cfg.train.tensorboard:
                self.log = TensorBoardLog(self.log, self.out / "tensorboard")
        # Ground-truth sets as a sparse lookup for the in-batch mask.
        self._gt_sets = [set(g) for g in self.queries.gts]
        # TRNS never-negatives (reference + annotated ground truths), built once, for the
        # queries this process mines (all of them in a single process).
        self._mine_rows = self.dist.share(len(self.queries))
        self._excluded = Exclusions(
            [
                sorted(g | {r})
                for g, r in zip(self._gt_sets, self.queries.reference.tolist(), strict=True)
            ][self._mine_rows]
        )
        self._images = self.train_table.images  # kept on CPU; batches move to the device

    # -- helpers ---------------------------------------------------------------------
    def _text_labels(self, table: SplitFeatures) -> torch.Tensor:
        attrs = self.model.attributes
        if self.lexicon is None or not attrs:
            return torch.zeros(len(table.texts), max(1, len(attrs)))
        return torch.tensor([self.lexicon.labels(t, attrs) for t in table.texts])

    def _autocast(self):
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp)

    def _img(self, rows: torch.Tensor) -> torch.Tensor:
        return self._images[rows].to(self.device, non_blocking=True).float()

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trns_active(self) -> bool:
        c = self.cfg
        return c.trns.enabled and (c.loss.w_kl > 0 or c.loss.w_rank > 0)

    # -- TRNS --------------------------------------------------------------------------
    @torch.no_grad()
    def mine(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.model.eval()
        d, mine = self.dist, self._mine_rows
        images = self._images if not d.active else _Rows(self._images, d.share(len(self._images)))
        pool = embed_gallery(self.model, images, self.device, self.cfg.eval.batch_size)
        pool = d.gather_nograd(pool)  # every process holds the whole pool
        t_pool = time.perf_counter() - t0
        qs = []  # this process scores its share of the queries
        for i in range(mine.start, mine.stop, self.cfg.eval.batch_size):
            sl = slice(i, min(i + self.cfg.eval.batch_size, mine.stop))
            ref = self._img(self.queries.reference[sl])
            tf = {
                k: v.to(self.device)
                for k, v in self.train_table.text_batch(self.queries.text[sl, 0]).items()
            }
            qs.append(self.model.query(ref, tf)["q_star"].float())
        q = torch.cat(qs)
        gen = torch.Generator(device=self.device).manual_seed(
            self.cfg.train.seed * 1000 + self.state.trns_updates + 7919 * d.rank
        )
        res = mine_negatives(
            q,
            pool,
            self.queries.target[mine].to(self.device),
            self._excluded,
            self.cfg.trns.k,
            self.zone,
            float(self.model.temperature().detach()),
            dup_threshold=self.cfg.trns.dup_threshold,
            chunk_size=self.cfg.trns.chunk_size,
            generator=gen,
        )
        self.negatives = d.gather_nograd(res.negatives.to(self.device)).cpu()  # all queries
        self.state.trns_last_step = self.state.global_step
        self.state.trns_updates += 1
        self.model.train()
        stats = dict(res.stats)
        if d.active:
            stats = _merge_mining_stats(d.all_gather_objects((mine.stop - mine.start, stats)))
        stats["pool_seconds"] = t_pool
        stats["total_seconds"] = time.perf_counter() - t0
        return stats

    def trns_terms(
        self,
        b: torch.Tensor,
        q_star: torch.Tensor,
        scores: torch.Tensor,
        tgt_tokens: torch.Tensor,
        tau: torch.Tensor,
        ignore: torch.Tensor | None,
        offset: int = 0,
        pooled_all: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``L_kl`` and ``L_rank`` over each query's target and its current TRNS negatives.

        ``scores`` ``[B, N]``: this process's queries against the targets of the whole
        (gathered) batch; query ``i``'s own target is column ``offset + i``. ``pooled_all``:
        pooled targets of the whole batch (for ``kl_inbatch``; default: these ``B``).
        """
        cfg = self.cfg
        negs = self.negatives[b]
        valid = (negs >= 0).to(self.device)
        neg_tokens = self.model.gallery_tokens(self._img(negs.clamp(min=0).flatten()))
        n_idx = self.model.to_index(neg_tokens).float()
        n_idx = n_idx.view(len(b), negs.shape[1], *n_idx.shape[1:])
        s_neg = torch.einsum("bd,bkld->bkl", q_star, n_idx).amax(-1)
        s_pos = scores.diagonal(offset)
        out: dict[str, torch.Tensor] = {}
        if cfg.loss.w_kl > 0:
            # soft targets: how much each candidate looks like the target itself (s_img)
            img_t = pooled(tgt_tokens.float()).detach()
            img_n = pooled(neg_tokens.float()).detach().view(len(b), negs.shape[1], -1)
            m_scores = torch.cat([s_pos.unsqueeze(1), s_neg], 1)
            i_scores = torch.cat(
                [torch.ones_like(s_pos).unsqueeze(1), torch.einsum("bd,bkd->bk", img_t, img_n)], 1
            )
            kvalid = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
            if cfg.loss.kl_inbatch:
                cols = torch.arange(scores.shape[1], device=self.device)
                own = offset + torch.arange(len(b), device=self.device)
                off = cols.unsqueeze(0) != own.unsqueeze(1)
                if ignore is not None:
                    off &= ~ignore
                img_all = img_t if pooled_all is None else pooled_all
                m_scores = torch.cat([m_scores, scores], 1)
                i_scores = torch.cat([i_scores, img_t @ img_all.T], 1)
                kvalid = torch.cat([kvalid, off], 1)
            out.update(self.kl(m_scores, i_scores, tau, kvalid))
        if cfg.loss.w_rank > 0:
            unit = tau.detach() if cfg.loss.rank_margin_units == "tau" else 1.0
            rank = self.rank(s_pos, s_neg, cfg.loss.rank_margin * unit, valid)
            out.update(self._over_all_slots(rank, valid, scores.shape[1]))
        return out

    def _over_all_slots(
        self, terms: dict[str, torch.Tensor], valid: torch.Tensor, n_all: int
    ) -> dict[str, torch.Tensor]:
        """Under torchrun: rescale terms that average over this process's valid negative slots
        (``MarginRank``) so that the batch-share weighting of :meth:`_backward` makes them the
        average over the slots of the whole batch, as in one process."""
        if not self.dist.active:
            return terms
        mine = valid.sum().clamp(min=1).float()
        every = self.dist.all_sum(valid.sum()).clamp(min=1).float()
        factor = mine / every * n_all / len(valid)
        return {k: v * factor for k, v in terms.items()}

    # -- one step ------------------------------------------------------------------------
    def step_losses(self, b: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Loss terms of the batch ``b`` (the global batch under torchrun: this process encodes
        its share of the rows; the in-batch terms, ITC and the attribute loss, see the rows of
        every process, gathered with gradients, and come out the same on every rank)."""
        cfg = self.cfg
        qz = self.queries
        choice = qz.options_of_epoch(b, self.state.epoch, self._text_offset)
        b_all, trows_all, mine = b, qz.text[b, choice], self.dist.share(len(b))
        b, trows = b_all[mine], trows_all[mine]
        gather = self.dist.gather  # identity in a single process
        tf = {k: v.to(self.device) for k, v in self.train_table.text_batch(trows).items()}
        tau = self.model.temperature()
        terms: dict[str, torch.Tensor] = {}
        with self._autocast():
            qo = self.model.query(self._img(qz.reference[b]), tf)
            tgt_tokens = self.model.gallery_tokens(self._img(qz.target[b]))
            tgt = self.model.to_index(tgt_tokens)
            q_star = qo["q_star"].float()
            scores = similarity(gather(q_star), gather(tgt.float()))  # [B_all, B_all]
            ignore = None
            if cfg.loss.mask_batch_gt:
                tg = qz.target[b_all].tolist()
                ignore = torch.tensor(
                    [[t in self._gt_sets[i] for t in tg] for i in b_all.tolist()],
                    device=self.device,
                )
            terms.update(self.itc(scores, tau, ignore))
            total = terms["itc"]
            if self.trns_active() and self.state.trns_updates > 0:
                pooled_all = None
                if self.dist.active and cfg.loss.kl_inbatch:
                    pooled_all = self.dist.gather_nograd(pooled(tgt_tokens.detach().float()))
                trns_terms = self.trns_terms(
                    b, q_star, scores[mine], tgt_tokens, tau,
                    ignore[mine] if ignore is not None else None, mine.start, pooled_all,
                )  # fmt: skip
                terms.update(trns_terms)
                total = total + cfg.loss.w_kl * trns_terms.get("kl", 0.0)
                total = total + cfg.loss.w_rank * trns_terms.get("rank", 0.0)
            if self.model.aw is not None and cfg.loss.w_attr > 0:
                labels = self.text_labels[trows_all].to(self.device)
                t_pooled = gather(pooled(tgt_tokens.float()))
                terms.update(
                    self.attr(
                        self.model.aw, gather(qo["h"]), gather(qo["q"]), t_pooled, labels, tau
                    )
                )
                total = total + cfg.loss.w_attr * terms["attr"]
        terms["loss"] = total
        return terms

    # -- evaluation --------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics (computed by rank 0, handed to every process)."""
        if not self.dist.is_main:
            return self.dist.broadcast_object(None)
        results = []
        for s in self.val_splits:
            r = rank_split(
                self.model, s, self.val_table, self.device,
                batch_size=self.cfg.eval.batch_size, topk=self.cfg.eval.topk,
            )  # fmt: skip
            results.append((s, score_split(r, self.model.attributes)))
        self.model.train()
        return self.dist.broadcast_object(merge_metrics(results))

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
            "python_rng": _py_rng_state(),
            "numpy_rng": _np_rng_state(),
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
        saved = config_from_dict(ck.meta["config"])
        world = int(ck.meta.get("world_size", 1))
        if world != self.dist.world:
            raise CheckpointError(
                f"checkpoint {ck.path} was written by a run of {world} process(es), this one has "
                f"{self.dist.world}: the global batch and the schedule would change; resume with "
                f"{world} process(es) in all"
            )
        for section in ("model", "data", "loss", "trns"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise CheckpointError(
                    f"checkpoint {ck.path}: its {section} config differs from this run's; "
                    "resume with the run's own config.yaml"
                )
        try:
            self._restore(ck)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise CheckpointError(
                f"checkpoint {ck.path}: cannot resume from it ({type(e).__name__}: {e}); "
                "it does not hold the state this run's config needs"
            ) from e
        log.info(
            "resumed from %s at epoch %d, step %d",
            ck.path,
            self.state.epoch,
            self.state.global_step,
        )

    def _restore(self, ck: Any) -> None:
        """Weights, optimizer, scheduler, loop state, TRNS negatives and RNG from ``ck``; any
        missing or misshapen piece raises (KeyError, ValueError...) before the loop starts."""
        self.model.load_trainable_state_dict(
            {k: v.to(self.device) for k, v in ck.model_state.items()}
        )
        opt_state = ck.optimizer_state()
        if opt_state is not None:
            _check_optimizer_shapes(self.opt, opt_state)
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
        torch.set_rng_state(ck.tensors["rng.torch"])
        _set_py_rng_state(ck.meta["python_rng"])
        _set_np_rng_state(ck.meta["numpy_rng"])

    def _diverged(self, epoch: int, vals: dict[str, float]) -> None:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
        kept = (
            f"{self.out / 'last.safetensors'} holds epoch {self.state.epoch}"
            if self.state.epoch
            else "no checkpoint was written"
        )
        self.log.write({"event": "diverged", "epoch": epoch, "step": self.state.global_step,
                        **{k: v if math.isfinite(v) else str(v) for k, v in vals.items()}})  # fmt: skip
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {self.state.global_step}: "
            f"the loss is not finite ({terms}); stopped without saving this epoch ({kept}). "
            "Lower train.lr, check train.grad_clip, or look for broken data"
        )

    def _backward(self, loss: torch.Tensor, n_batch: int) -> None:
        """Backward pass; under torchrun, each process's loss is weighted by its share of the
        batch and gradients are averaged, so the update is the one-process update of the
        whole batch (shares may differ by one row)."""
        if not self.dist.active:
            loss.backward()
            return
        share = _size(self.dist.share(n_batch))
        (loss * (share * self.dist.world / n_batch)).backward()
        self.dist.average_gradients(self._trainable())

    # -- the loop ----------------------------------------------------------------------
    def fit(self, stop_after_epoch: int = 0) -> Path:
        cfg = self.cfg
        self.model.train()
        headline = cfg.eval.headline
        last_path = self.out / "best.safetensors"
        while self.state.epoch < cfg.train.epochs:
            epoch = self.state.epoch
            gen = torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch)
            perm = torch.randperm(len(self.queries), generator=gen)
            bar = tqdm(
                range(self.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                leave=False, mininterval=1.0, disable=not self.dist.is_main,
            )  # fmt: skip
            t_epoch = time.perf_counter()
            trns_seconds = 0.0
            sums: dict[str, float] = {}
            n_sums = 0
            for i in bar:
                if self.trns_active() and self.schedule.due(
                    epoch, self.state.global_step, self.steps_per_epoch, self.state.trns_last_step
                ):
                    stats = self.mine()
                    trns_seconds += stats["total_seconds"]
                    self.log.write({"event": "trns", "epoch": epoch, "step": self.state.global_step,
                                    "tau": float(self.model.temperature().detach()), **stats})  # fmt: skip
                b = perm[slice(*self.batches[i])]
                t0 = time.perf_counter()
                terms = self.step_losses(b, gen)
                self.opt.zero_grad(set_to_none=True)
                self._backward(terms["loss"], len(b))
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in self.model.parameters() if p.requires_grad], cfg.train.grad_clip
                    )
                self.opt.step()
                self.sched.step()
                self.state.global_step += 1
                dt = time.perf_counter() - t0
                vals = {k: float(v.detach()) for k, v in terms.items()}
                vals = self.dist.weighted_mean(vals, _size(self.dist.share(len(b))))
                if not math.isfinite(vals["loss"]):  # the same on every process
                    self._diverged(epoch, vals)
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sums += 1
                bar.set_postfix(loss=f"{vals['loss']:.4f}", sps=f"{len(b) / dt:.0f}")
                if (
                    self.state.global_step % cfg.train.log_every == 0
                    or i == self.steps_per_epoch - 1
                ):
                    self.log.write({"event": "step", "epoch": epoch, "step": self.state.global_step,
                                    "lr": self.sched.get_last_lr()[0],
                                    "tau": float(self.model.temperature().detach()),
                                    "samples_per_s": len(b) / dt, **vals})  # fmt: skip
                if cfg.train.max_steps and self.state.global_step >= cfg.train.max_steps:
                    break
            epoch_seconds = time.perf_counter() - t_epoch
            self.state.epoch += 1
            metrics: dict[str, float] = {}
            if self.state.epoch % cfg.train.eval_every == 0 or self.state.epoch == cfg.train.epochs:
                metrics = self.validate()
                if headline not in metrics:
                    raise ConfigError(
                        f"eval.headline={headline!r} is not among the validation metrics "
                        f"{sorted(metrics)[:12]}..."
                    )
            means = {k: v / max(1, n_sums) for k, v in sums.items()}
            rec = {"event": "epoch", "epoch": epoch, "step": self.state.global_step,
                   "epoch_seconds": epoch_seconds, "trns_seconds": trns_seconds,
                   "train": means, "val": metrics}  # fmt: skip
            self.log.write(rec)
            (log.info if self.dist.is_main else log.debug)(
                "epoch %d/%d loss %.4f val %s=%s (%.1fs)", self.state.epoch, cfg.train.epochs,
                means.get("loss", float("nan")), headline, metrics.get(headline, "-"), epoch_seconds,
            )  # fmt: skip
            if metrics and metrics[headline] > self.state.best:
                self.state.best = metrics[headline]
                self.state.best_epoch = self.state.epoch
                self.save("best.safetensors", metrics)
            self.save("last.safetensors", metrics)
            if cfg.train.max_steps and self.state.global_step >= cfg.train.max_steps:
                break
            if stop_after_epoch and self.state.epoch >= stop_after_epoch:
                break
        if not (self.out / "best.safetensors").exists():
            self.save("best.safetensors")
        return last_path


def _check_optimizer_shapes(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """torch loads optimizer moments of any shape and fails at the first step; fail now."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for pid, st in state["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"optimizer state for parameter {pid}, the model has {len(params)}")
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape != params[int(pid)].shape:
                raise ValueError(
                    f"optimizer {name} of parameter {pid} has shape {tuple(v.shape)}, the "
                    f"parameter {tuple(params[int(pid)].shape)}"
                )


def _size(s: slice) -> int:
    return s.stop - s.start


class _Rows:
    """Rows ``[start, stop)`` of a feature table (tensor or memory-mapped rows), sliced
    lazily: what :func:`embed_gallery` needs of this process's share of the pool."""

    def __init__(self, rows: Any, part: slice) -> None:
        self.rows, self.part = rows, part

    def __len__(self) -> int:
        return _size(self.part)

    def __getitem__(self, s: slice) -> torch.Tensor:
        start, stop, _ = s.indices(len(self))
        return self.rows[self.part.start + start : self.part.start + stop]


def _merge_mining_stats(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """One record from every process's TRNS statistics: query-weighted means (of medians and
    quantiles too: an approximation), slot counts summed, times the slowest process's."""
    total = sum(n for n, _ in parts) or 1
    out: dict[str, float] = {}
    for key in parts[0][1]:
        vals = [(n, st[key]) for n, st in parts]
        if key == "missing_slots":
            out[key] = sum(v for _, v in vals)
        elif key.endswith("seconds"):
            out[key] = max(v for _, v in vals)
        else:
            out[key] = sum(n * v for n, v in vals) / total
    out["processes"] = len(parts)
    return out


def _py_rng_state() -> list:
    v, state, g = random.getstate()
    return [v, list(state), g]


def _set_py_rng_state(s: list) -> None:
    random.setstate((s[0], tuple(s[1]), s[2]))


def _np_rng_state() -> list:
    name, keys, pos, has_g, g = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_g), float(g)]


def _set_np_rng_state(s: list) -> None:
    np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4]))


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
        cfg = config_from_dict(load_checkpoint(last).meta["config"])
    elif cfg is None:
        raise ConfigError("train: a config is needed unless resuming")
    out.mkdir(parents=True, exist_ok=True)
    env = init_distributed(cfg.train.device)  # a single process unless under torchrun
    try:
        if env.is_main:
            _drop_temporary_files(out)
            if not resume:
                (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
            (out / "config.yaml").write_text(cfg.to_yaml())
        trainer = Trainer(cfg, out, dist=env)
        try:
            if resume:
                trainer.resume(out / "last.safetensors")
                if env.is_main:
                    _truncate_log(out / "log.jsonl", trainer.state.epoch)
            return trainer.fit(stop_after_epoch=stop_after_epoch)
        finally:
            trainer.log.close()
    finally:
        shutdown(env)


def _drop_temporary_files(out: Path) -> None:
    """Temporary files of writes a kill interrupted (``atomic_write``'s ``.NAME.*.tmp``)."""
    for name in ("last.safetensors", "best.safetensors", "log.jsonl"):
        for tmp in out.glob(f".{name}.*.tmp"):
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


def _truncate_log(path: Path, epochs_done: int) -> None:
    """Keep the log records of the ``epochs_done`` epochs the checkpoint holds: the records an
    interrupted epoch wrote before the kill are written again by its rerun (a line cut short
    by the kill goes too)."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = int(record["epoch"]) < epochs_done
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info("resume: dropped %d log records of the interrupted epoch from %s", dropped, path)
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{x}\n" for x in kept)))
