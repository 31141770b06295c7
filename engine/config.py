"""Typed training configuration: dataclass defaults, a YAML file, then `key=value` overrides.

`load_config(yaml_path, overrides)` builds a `Config`, validates it once and raises `ConfigError`
naming the bad key. `Config.to_dict()` is what the run directory's `config.yaml` holds.
Imports the standard library, yaml and `modalities.options` (the one typed-options parser, shared
with the modalities' own options).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modalities.options import OptionError, coerce

OBJECTIVES = ("jepa", "mae")
TARGET_NORMS = ("position_centered", "double_centered", "layer_norm", "position_whitened")
INITS = ("fan_in", "ijepa")


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or out of range; the message names the key."""


def resumable(default: Any) -> Any:
    """A field that may differ between a checkpoint and the run resuming it: it changes neither
    the model nor the sample sequence (`resumable_keys`). Every other field must match for an
    exact resume."""
    return field(default=default, metadata={"resumable": True})


@dataclass
class SourceConfig:
    """One dataset of a run that mixes several (`data.sources`)."""

    path: str = ""  # dataset directory
    weight: float = 1.0  # its share of each epoch's samples, relative to the other sources'


#: how `data.sources` meet in a batch: sample (any source's samples share a batch; one modality
#: only) | modality (each batch holds one modality's samples, its sources mixed)
MIXES = ("sample", "modality")


@dataclass
class DataConfig:
    path: str = resumable("")  # dataset directory (usually given as --data)
    # Several datasets in one run (instead of `path`): cohorts of one modality, or several
    # modalities sharing the trunk (each its own embedder and masker). Each epoch draws
    # sum(records) samples, source s its weight's share (a small source repeats, a large one is
    # cut; engine.data.epoch_batches). Paths may change on resume (a moved dataset); weights not.
    sources: list[SourceConfig] = field(default_factory=list)
    mix: str = "sample"  # sample | modality (see MIXES); several modalities need modality
    # "" = the registered modality named by the dataset's manifest; or "package.module:ATTR"
    # for a Modality object outside the registry; with several modalities, name=SPEC pairs,
    # comma-separated (engine.data.resolve_modality).
    modality: str = ""
    batch_size: int = 32  # samples per micro-batch per rank
    # DataLoader worker processes (0 = tokenize in the main process)
    num_workers: int = resumable(1)
    prefetch_factor: int = resumable(4)
    shuffle_buffer: int = 1024  # window of the within-buffer sample shuffle
    verify: str = resumable("first_touch")  # shard checksums: first_touch | all | none


@dataclass
class ModelConfig:
    # The trunk only: patch geometry, tokenizer and masks belong to the modality (the
    # `modality:` section, parsed into its `method_type`; docs/modalities.md).
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    pred_dim: int = 96  # the predictor is narrow (I-JEPA: 384 next to a 1280-wide ViT-H)
    pred_depth: int = 3
    pred_heads: int = 3
    # How the predictor sees the context. once: the encoded context enters its first layer and
    # then evolves with the mask tokens (I-JEPA's). every_layer: each layer reads the encoded
    # context afresh, only the mask tokens carry state from layer to layer (3D-JEPA's
    # context-aware decoder, which feeds the context into every decoder layer).
    pred_context: str = "once"
    # Weight init of every linear layer. fan_in: truncated normal with std 1/sqrt(fan_in), so
    # a token's content reaches the stream at the scale of its position code at any width and
    # patch size; ijepa: std 0.02 everywhere (I-JEPA's, tuned for 768-1280 wide ViTs on
    # 768-value patches; on a 16-value fMRI patch it starts content 30x below position).
    # Both scale the residual projections of block i by 1/sqrt(2 i).
    init: str = "fan_in"


@dataclass
class LossConfig:
    # jepa: regress the EMA target encoder's features of the target tokens; mae: regress the
    # target tokens themselves (each standardised over its values, MAE's normalised pixels),
    # from the same context encoder and predictor, with no target encoder.
    objective: str = "jepa"
    kind: str = "smooth_l1"  # smooth_l1 (I-JEPA) | l1 (V-JEPA) | l2
    beta: float = 1.0  # smooth L1 transition point
    # How JEPA targets are normalised. position_centered: subtract, at each token position
    # (equal coords), the batch mean of the target features there, then layer-norm each token;
    # a target that only encodes where the token sits is then zero, so the predictor cannot
    # meet the targets from the mask tokens' positions alone. double_centered: also subtract
    # each record's own mean over its tokens (a feature constant over a record, which any
    # context token gives away, is then zero too). layer_norm: I-JEPA's per-token layer norm
    # only. position_whitened: position-centred, then ZCA-whitened over the batch's tokens
    # before the layer norm, so no few strong directions (a record-level trait) drown the rest
    # (an experiment: docs/results.md; the target encoder then runs without a CUDA graph).
    target_norm: str = "position_centered"
    # > 0: add this times VICReg's variance and covariance terms on the position-centred
    # context features (`engine.objective.spread_penalty`): an anti-collapse term (C-JEPA)
    spread: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_frac: float = 0.1  # fraction of train.steps spent warming up linearly from 0
    weight_decay: float = 0.04  # cosine ramp to final_weight_decay (I-JEPA)
    final_weight_decay: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    grad_accum: int = 1
    # A shared trunk (several modalities): what an embedder whose modality is absent from a step
    # does. momentum: AdamW steps it on a zero gradient (its momentum and weight decay still
    # move it); still: lr and weight decay 0 for it that step.
    idle_embedders: str = "momentum"


@dataclass
class EMAConfig:
    start: float = 0.996  # I-JEPA's linear ramp
    end: float = 1.0


@dataclass
class TrainConfig:
    steps: int = resumable(1000)  # optimizer steps
    save_every: int = resumable(500)  # 0 = only at the end
    keep_checkpoints: int = resumable(2)  # newest complete checkpoints kept (0 = all)
    log_every: int = resumable(1)
    seed: int = 0
    zero_stage: int = 2
    # gradients reduced (ZeRO-3: reduce-scattered) per bucket, in elements (DeepSpeed's default)
    # (memory and communication only: the sums are the same, so a resume may change it, and a
    # checkpoint written before the key existed resumes)
    zero_bucket: int = resumable(500_000_000)
    # ZeRO-3 only, DeepSpeed's defaults: at most this many parameters gathered at once per rank;
    # a gathered parameter used again within this many parameters stays gathered (between the
    # forward and the backward too: the defaults keep a model under 1e9 parameters whole through
    # its step); this many parameters fetched ahead. Smaller: less memory, more communication.
    zero3_max_live: int = resumable(1_000_000_000)
    zero3_reuse_distance: int = resumable(1_000_000_000)
    zero3_prefetch: int = resumable(50_000_000)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    nonfinite: str = "stop"  # stop | skip (skip the micro-batch on every rank and count it)
    # with nonfinite=skip: stop once this many micro-batches were skipped
    max_skips: int = resumable(100)
    progress: bool = resumable(True)  # tqdm bar on rank 0
    # CUDA only: replay the target encoder's forward from a CUDA graph per batch shape (one
    # launch instead of hundreds; same numbers). Off: the eager forward.
    cuda_graph_target: bool = resumable(True)
    # CUDA only: replay the trained part's forward and backward from CUDA graphs, one per
    # padded size bucket (engine.graphs.GraphedJEPA; at most 4% padding, none of it in the loss
    # or the gradients). Off: eager.
    cuda_graph_step: bool = resumable(True)
    # most buckets captured; batches of other sizes run eagerly
    cuda_graph_buckets: int = resumable(64)
    # bucket ladder ratio: at most this much padding per count
    cuda_graph_ratio: float = resumable(1.04)
    # CUDA only: the blocks' LayerNorms on the fused Triton kernel (kernels.layer_norm); false:
    # torch's. Same numbers up to float rounding; on CPU both are F.layer_norm.
    fused_layernorm: bool = resumable(True)
    # Training diagnostics (position share of the targets, their spread and effective rank,
    # attention entropy per layer) every this many steps; 0 = off. A warning names the number
    # when a run looks like the positional shortcut or a collapse.
    diag_every: int = resumable(25)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The modality's method options (tokenizer, masks, embedder: fMRI's `modality.pos`,
    # `modality.patch_len`; the grid's and EEG's `modality.masks`), free-form here: the engine
    # never reads them. `engine.data.method_options` parses them into the modality's own
    # `method_type`, which names the bad key (`modality.obs_scale: ...`).
    modality: dict[str, Any] = field(default_factory=dict)
    # Keys of a run saved before the modality owned its options (`model.patch_len`, `mask.*`),
    # as {dotted key: value}: read from that run's config.yaml so its checkpoints still load,
    # handed to the modality's `legacy_options`, never written back.
    legacy: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["legacy"]
        return out


def resumable_keys() -> set[str]:
    """Dotted keys of the fields declared with `resumable`."""
    out = set()
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]
        if dataclasses.is_dataclass(cls):
            out.update(
                f"{section.name}.{f.name}"
                for f in dataclasses.fields(cls)
                if f.metadata.get("resumable")
            )
    return out


# ----------------------------------------------------------------------------------------------
# building


def _plain(key: str, value: Any) -> Any:
    """`value` if it is a YAML scalar, or a list of scalars, lists and mappings (a list of mask
    specs), so the saved config round-trips."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_plain(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict) and key.endswith("]"):
        return {str(k): _plain(f"{key}.{k}", v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"{key}: expected a number, string, boolean or list, got {value!r}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "modality":
        # A run of several modalities keeps each one's options under its name:
        # modality.fmri.patch_len (engine.data.modality_section).
        keyed = cfg.modality.setdefault(parts[1], {})
        if not isinstance(keyed, dict):
            raise ConfigError(
                f"{key}: modality.{parts[1]} is an option ({keyed!r}), not a modality's section"
            )
        keyed[parts[2]] = _plain(key, value)
        return
    if len(parts) != 2:
        raise ConfigError(f"{key}: keys look like section.name, e.g. optim.lr")
    section_name, name = parts
    sections = {k: v for k, v in _section_types(Config).items() if k != "legacy"}
    if is_legacy_key(key):
        raise ConfigError(
            f"{key}: masks and patch geometry belong to the modality now; set them in the "
            "`modality:` section (e.g. modality.patch_len, modality.masks; docs/modalities.md)"
        )
    if section_name not in sections:
        raise ConfigError(f"{key}: unknown section {section_name!r}; known: {', '.join(sections)}")
    section = getattr(cfg, section_name)
    if isinstance(section, dict):
        # The free-form `modality` section: store the YAML value; the modality validates it.
        if isinstance(section.get(name), dict):
            raise ConfigError(f"{key}: modality.{name} is a modality's section of options")
        section[name] = _plain(key, value)
        return
    fields = _section_types(type(section))
    if name not in fields:
        raise ConfigError(
            f"{key}: unknown key in section {section_name!r}; known: {', '.join(fields)}"
        )
    try:
        setattr(section, name, coerce(key, value, fields[name]))
    except OptionError as e:
        raise ConfigError(str(e)) from None


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested mapping -> [(dotted key, leaf value)], in order."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {tree!r}")
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`section.name=value` -> (key, value); the value is parsed as YAML (so 1e-3, true, [1, 2])."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like section.name=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: unparsable value {raw!r} ({e})") from None
    return key.strip(), value


def load_config(
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides, then `values`; validated."""
    cfg = Config()
    if yaml_path is not None:
        try:
            tree = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{yaml_path}: cannot read config ({e})") from None
        for key, value in flatten(tree):
            _set(cfg, key, value)
    for text in overrides or []:
        _set(cfg, *parse_override(text))
    for key, value in (values or {}).items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def is_legacy_key(key: str) -> bool:
    """Whether `key` is one a run saved before the modality owned its options may hold
    (`model.patch_len`, `mask.*`): read into `Config.legacy`, refused in a new config."""
    return key == "model.patch_len" or key.startswith("mask.")


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A `Config` from `Config.to_dict()` output (a saved run's config), validated. A run saved
    before the modality owned its options keeps `model.patch_len` and `mask.*`: those go to
    `cfg.legacy` (the modality maps them, `Modality.legacy_options`)."""
    cfg = Config()
    for key, value in flatten(tree):
        if is_legacy_key(key):
            cfg.legacy[key] = value
        else:
            _set(cfg, key, value)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}, got {value!r}")


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first bad key."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    for key, v in (
        ("data.batch_size", d.batch_size),
        ("data.prefetch_factor", d.prefetch_factor),
        ("data.shuffle_buffer", d.shuffle_buffer),
        ("model.embed_dim", m.embed_dim),
        ("model.depth", m.depth),
        ("model.num_heads", m.num_heads),
        ("model.pred_dim", m.pred_dim),
        ("model.pred_depth", m.pred_depth),
        ("model.pred_heads", m.pred_heads),
        ("optim.grad_accum", o.grad_accum),
        ("train.steps", t.steps),
        ("train.log_every", t.log_every),
    ):
        _check(v >= 1, key, "must be >= 1", v)
    for key, v in (
        ("data.num_workers", d.num_workers),
        ("train.save_every", t.save_every),
        ("train.keep_checkpoints", t.keep_checkpoints),
        ("train.max_skips", t.max_skips),
        ("train.diag_every", t.diag_every),
        ("optim.grad_clip", o.grad_clip),
        ("optim.min_lr", o.min_lr),
        ("optim.weight_decay", o.weight_decay),
        ("optim.final_weight_decay", o.final_weight_decay),
    ):
        _check(v >= 0, key, "must be >= 0", v)
    _check(
        d.verify in ("first_touch", "all", "none"), "data.verify", "first_touch|all|none", d.verify
    )
    _check(d.mix in MIXES, "data.mix", "|".join(MIXES), d.mix)
    if d.sources:
        _check(not d.path, "data.path", "give data.path or data.sources, not both", d.path)
        for i, src in enumerate(d.sources):
            _check(bool(src.path), f"data.sources[{i}].path", "must name a dataset", src.path)
            _check(src.weight > 0, f"data.sources[{i}].weight", "must be > 0", src.weight)
        paths = [src.path for src in d.sources]
        _check(len(set(paths)) == len(paths), "data.sources", "lists a dataset twice", paths)
    _check(
        m.embed_dim % m.num_heads == 0,
        "model.num_heads",
        "must divide model.embed_dim",
        m.num_heads,
    )
    _check(
        m.pred_dim % m.pred_heads == 0,
        "model.pred_heads",
        "must divide model.pred_dim",
        m.pred_heads,
    )
    _check(m.mlp_ratio > 0, "model.mlp_ratio", "must be > 0", m.mlp_ratio)
    _check(
        m.pred_context in ("once", "every_layer"),
        "model.pred_context",
        "once|every_layer",
        m.pred_context,
    )
    _check(
        cfg.loss.kind in ("smooth_l1", "l1", "l2"), "loss.kind", "smooth_l1|l1|l2", cfg.loss.kind
    )
    _check(cfg.loss.objective in OBJECTIVES, "loss.objective", "jepa|mae", cfg.loss.objective)
    _check(
        cfg.loss.target_norm in TARGET_NORMS,
        "loss.target_norm",
        "|".join(TARGET_NORMS),
        cfg.loss.target_norm,
    )
    _check(m.init in INITS, "model.init", "|".join(INITS), m.init)
    _check(cfg.loss.beta > 0, "loss.beta", "must be > 0", cfg.loss.beta)
    _check(
        math.isfinite(cfg.loss.spread) and cfg.loss.spread >= 0,
        "loss.spread",
        "must be >= 0",
        cfg.loss.spread,
    )
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(0 <= o.warmup_frac < 1, "optim.warmup_frac", "must be in [0, 1)", o.warmup_frac)
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        "expected [beta1, beta2] in [0, 1)",
        o.betas,
    )
    _check(o.eps > 0, "optim.eps", "must be > 0", o.eps)
    _check(
        o.idle_embedders in ("momentum", "still"),
        "optim.idle_embedders",
        "momentum|still",
        o.idle_embedders,
    )
    for key, v in (("ema.start", cfg.ema.start), ("ema.end", cfg.ema.end)):
        _check(0 <= v <= 1, key, "must be in [0, 1]", v)
    _check(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", "must be 0, 1, 2 or 3", t.zero_stage)
    _check(t.zero_bucket > 0, "train.zero_bucket", "must be > 0", t.zero_bucket)
    for key in ("zero3_max_live", "zero3_reuse_distance", "zero3_prefetch"):
        _check(getattr(t, key) >= 0, f"train.{key}", "must be >= 0", getattr(t, key))
    _check(
        t.precision in ("auto", "fp32", "bf16"), "train.precision", "auto|fp32|bf16", t.precision
    )
    _check(t.nonfinite in ("stop", "skip"), "train.nonfinite", "stop|skip", t.nonfinite)
    _check(
        t.cuda_graph_buckets >= 0, "train.cuda_graph_buckets", "must be >= 0", t.cuda_graph_buckets
    )
    _check(t.cuda_graph_ratio > 1, "train.cuda_graph_ratio", "must be > 1", t.cuda_graph_ratio)


def kernel_notes(cfg: Config) -> list[str]:
    """What in `cfg` keeps a GPU run off its fastest path: head dims (width / heads) the Triton
    attention kernel does not take (that attention runs on the slower torch reference), naming
    the keys; ZeRO-3, which turns the CUDA-graph step off."""
    from kernels.attention import SUPPORTED_HEAD_DIMS

    m, out = cfg.model, []
    for part, width, heads in (
        ("model.embed_dim / model.num_heads", m.embed_dim, m.num_heads),
        ("model.pred_dim / model.pred_heads", m.pred_dim, m.pred_heads),
    ):
        if width % heads == 0 and width // heads not in SUPPORTED_HEAD_DIMS:
            out.append(
                f"{part} = {width} / {heads}: head dim {width // heads} is not one the Triton "
                f"attention kernel takes {SUPPORTED_HEAD_DIMS}; that attention runs on the torch "
                "reference on GPU (same result, slower)"
            )
    t = cfg.train
    if t.zero_stage == 3 and (t.cuda_graph_step or t.cuda_graph_target):
        out.append(
            "train.zero_stage=3: the step and the target forward run eagerly, not from CUDA "
            "graphs (ZeRO-3 gathers each layer's parameters from Python hooks, which a graph "
            "cannot replay)"
        )
    if cfg.loss.spread > 0 and t.cuda_graph_step:
        out.append(
            "loss.spread > 0: the step runs eagerly, not from a CUDA graph (the penalty reads "
            "the context features the forward keeps)"
        )
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
