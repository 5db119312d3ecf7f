"""Experiment configuration: dataclasses, YAML in, resolved YAML out.

Every field has a default; a YAML file sets what differs and ``--set section.key=value`` overrides
from the command line. Unknown keys are errors (a typo must not silently train with a default).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dqecir.errors import DqecirError


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads an exponent number without a dot ("1e-4") as a
    float, as YAML 1.2 does (YAML 1.1 makes it a string), in every field, free-form ones such
    as ``model.backbone_kwargs`` included."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no Python objects


class ConfigError(DqecirError):
    """A configuration file or override is invalid."""


@dataclass
class ModelConfig:
    backbone: str = "lite"
    """Registered backbone name (tiny, lite, blip2)."""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    attribute_weights: str = "none"
    """Attribute weights (AW): none | gate | subspace."""
    attributes: list[str] = field(default_factory=lambda: ["color", "shape"])
    """Named attributes; an implicit ``other`` is always added."""
    subspace_dim: int = 64
    """Size of each attribute subspace (``subspace`` realisation)."""


@dataclass
class DataConfig:
    benchmark: str = "cirr"
    """Annotation layout of the training data: cirr | circo | fashioniq."""
    root: str = ""
    """Benchmark root folder (overridden by ``--data-root``)."""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test1"
    categories: list[str] = field(default_factory=lambda: ["dress", "shirt", "toptee"])
    """FashionIQ categories (ignored elsewhere)."""
    lexicon: str = ""
    """Attribute lexicon: ``benchmark`` (the train-phrasing lexicon an embedded benchmark writes
    as ``<root>/lexicon.yaml``), a name under ``dqecir/lexicons`` (fashioniq, cirr) or a YAML
    path; empty for none."""
    make: dict[str, Any] = field(default_factory=dict)
    """If set and ``root`` does not exist: arguments of ``make_benchmark`` (kind, seed, size,
    hard_only_train) to build an embedded benchmark there first."""
    cache_dir: str = ""
    """Frozen-feature cache folder; empty means ``<root>/.dqecir-cache``."""
    skip_missing: bool = False
    random_caption_order: bool = True
    """FashionIQ: join the two captions in a random order in training (SPRC)."""
    caption_variants: int = 0
    """Training queries with a pool of phrasings (the embedded benchmarks' ``caption_variants``)
    read one per epoch, in turn; this keeps the first N of each pool (0: all)."""


@dataclass
class LossConfig:
    temperature: float = 0.07
    learn_temperature: bool = True
    mask_batch_gt: bool = True
    """Do not treat another query's target as an in-batch negative when it is an annotated ground
    truth of this query (or the same image)."""
    w_kl: float = 0.0
    w_rank: float = 0.0
    w_attr: float = 0.0
    tau_soft: float = 0.05
    kl_inbatch: bool = False
    """Add the in-batch targets to the KL candidate set."""
    rank_margin: float = 6.0
    rank_margin_units: str = "tau"
    """tau: margin in units of the current temperature (margin * tau); abs: cosine units."""
    attr_bce: float = 1.0
    attr_nce: float = 0.0
    """The per-attribute in-batch InfoNCE of L_attr; off by default: it hurt on val
    (docs/method.md)."""
    attr_value: float = 0.0
    """The value term of L_attr (a weight): the value a text names ("red") as a label of the
    target's attribute embedding, every target of that value a positive of the query
    (:class:`dqecir.losses.AttributeLoss`); measured in docs/method.md."""


@dataclass
class TRNSConfig:
    enabled: bool = False
    warmup_epochs: int = 1
    update_interval: int = 1
    interval_unit: str = "epoch"
    """epoch | step."""
    k: int = 16
    zone: str = "quantile"
    """quantile: per-query rank band (default, chosen on val: docs/method.md); tau: bounds on
    delta/tau; abs: bounds on delta."""
    zlow: float = -8.0
    zhigh: float = -0.5
    low: float = -0.25
    high: float = -0.02
    qlow: float = 0.97
    qhigh: float = 0.998
    """Data that annotates one target per query (FashionIQ, CIRR) wants a lower upper bound
    as its false-negative guard, e.g. [0.90, 0.98] (docs/method.md)."""
    dup_threshold: float = 0.0
    """Exclude candidates whose image similarity to the target is >= this (0 disables)."""
    chunk_size: int = 1024
    """Queries scored per chunk against the pool (bounds memory)."""
    negative_grad: bool = True
    """Whether L_kl / L_rank train the gallery encoding of the negatives (through the fusion's
    image path). False encodes them without gradient (their attribute transform still trains):
    the same terms for a cheaper step (0.82x on the demo's qformer), but 4.3 mAP@10 lower on
    fmnist val, so true stays the default (docs/method.md, "TRNS negatives keep their gradient")."""
    relevance_grad: bool = True
    """Whether L_kl / L_rank train the attribute relevance ``alpha`` (the text's head and, through
    it, the text tower). False scores the TRNS terms with ``alpha`` held fixed, so that only
    ``L_attr`` and ``L_itc`` train it: the relevance then follows its labels better (94.4
    against 92.2 % on fmnist val-unseen) but ranking loses (84.3 against 85.0 mAP@10 seen, 66.8
    against 69.9 unseen), so true stays the default (docs/method.md, "The relevance under
    TRNS")."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_pretrained: float = 0.0
    """Learning rate of trainable weights that start from a pretrained tower (lite's trained
    MiniLM top layers); 0: ``lr``."""
    weight_decay: float = 0.05
    anchor_decay: float = 0.0
    """Decoupled decay of the weights that start from a pretrained tower (lite's trained MiniLM
    top layers) toward their shipped values instead of toward zero, at this rate per unit of
    learning rate (L2-SP in AdamW's decoupled form); 0: they take ``weight_decay`` like the rest.
    """
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "cosine"
    """cosine | onecycle | constant (all with linear warm-up)."""
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    amp: str = "auto"
    """auto (bf16 on CUDA) | bf16 | none."""
    feature_batch_size: int = 64
    eval_every: int = 1
    log_every: int = 10
    max_steps: int = 0
    """Stop after this many optimizer steps (0: no limit; for tests and smoke runs)."""
    init_from: str = ""
    """A checkpoint (a file, or a run folder for its ``best.safetensors``) whose weights a fresh
    run starts from: every trainable backbone weight must be there with its shape (the same
    backbone and sizes); the model's own heads load where the checkpoint has them and start
    fresh where it has not (the attribute weights, when full DQE-CIR continues an ``L_itc``
    run). The optimizer, schedule and TRNS state start fresh. Ignored by ``--resume``."""
    num_threads: int = 0
    """torch threads on CPU (0: torch default)."""
    tensorboard: bool = False
    """Also write every log record as TensorBoard scalars into ``<run>/tensorboard``
    (needs the ``tensorboard`` extra: ``pip install 'dqecir[tensorboard]'``)."""


@dataclass
class EvalConfig:
    batch_size: int = 256
    topk: int = 50
    headline: str = ""
    """Metric that picks the best checkpoint; empty: the benchmark protocol's (``avg`` for CIRR,
    ``map@10`` for CIRCO, ``average/recall@10`` for FashionIQ). The embedded benchmarks, scored
    in the CIRR layout, set ``map@10``."""


@dataclass
class Config:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trns: TRNSConfig = field(default_factory=TRNSConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


RESULT_NEUTRAL = {"name", "train.device", "train.num_threads", "train.tensorboard",
                  "train.log_every", "train.feature_batch_size", "data.cache_dir",
                  "eval.batch_size"}  # fmt: skip
"""Config keys that change where or how fast a run goes, not what it trains."""


def training_differences(a: Config, b: Config) -> list[str]:
    """The dotted keys in which two run configs differ in what they train: every key but
    :data:`RESULT_NEUTRAL`, and the ``trns`` section only where TRNS is on in either."""

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    skip = set(RESULT_NEUTRAL)
    if not (a.trns.enabled or b.trns.enabled):
        skip |= {k for k in {*fa, *fb} if k.startswith("trns.")}
    return sorted(k for k in {*fa, *fb} - skip if fa.get(k) != fb.get(k))


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check / convert a YAML value to the annotated field type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            if len(args) == 2 and args[1] is not Ellipsis and len(out) != 2:
                raise ConfigError(f"{where}: expected 2 values, got {len(out)}")
            return tuple(out)
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: the number is too large for a float") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data or {}, "")


def checkpoint_config(data: dict[str, Any]) -> Config:
    """The config a checkpoint was written with (its ``meta["config"]``), with the defaults of
    that time where they have changed since: a ``lite`` model with WordNet hints saved before
    ``hint_rule`` existed read its texts under rule 1."""
    cfg = config_from_dict(data)
    kwargs = cfg.model.backbone_kwargs
    if cfg.model.backbone == "lite" and kwargs.get("text_hints") and "hint_rule" not in kwargs:
        kwargs["hint_rule"] = 1
    return cfg


def _yaml_problem(e: BaseException) -> str:
    """Why a YAML text could not be read, in a user's words (PyYAML raises ValueError for an
    integer of thousands of digits and RecursionError for nesting thousands deep)."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(e):
        return f"a number has too many digits (more than {sys.get_int_max_str_digits()})"
    return str(e)


def _parse_scalar(key: str, text: str) -> Any:
    try:
        return _read_yaml(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(f"override {key}=...: invalid YAML value: {_yaml_problem(e)}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(key.strip(), raw)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = _read_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: invalid YAML: {e}") from e
        except (ValueError, RecursionError) as e:  # digits / nesting Python cannot hold
            raise ConfigError(f"config file {p}: invalid YAML: {_yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as e:
        where = f"config file {path}" if path else "config"
        raise ConfigError(f"{where}: {e}") from e
