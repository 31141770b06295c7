"""The training loop: DeepSpeed-wrapped context encoder + predictor, fp32 EMA target outside it.

`Trainer(cfg, run_dir, dist_info, resume)` builds everything (data, model, optimizer, DeepSpeed
engine, EMA target, metrics), restores a checkpoint when asked and `run()` trains to
`cfg.train.steps`, checkpointing every `cfg.train.save_every` steps and at the end.
Imports deepspeed (the caller has set DS_ACCELERATOR and the process group), torch and engine.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.batch import PackedBatch
from engine.checkpoint import (
    DS_TAG,
    CheckpointError,
    install_safe_loader,
    load_checkpoint,
    read_state,
    save_checkpoint,
    universal_tag,
)
from engine.config import (
    Config,
    ConfigError,
    flatten,
    is_legacy_key,
    kernel_notes,
    resumable_keys,
)
from engine.data import (
    DataSources,
    JEPALoader,
    build_embedder,
    is_keyed,
    method_options,
    modality_section,
    sample_rng,
)
from engine.diagnostics import attention_entropy, check, target_diagnostics
from engine.graphs import GraphedJEPA, GraphedTargetFeatures
from engine.launch import DistInfo
from engine.metrics import MetricsLogger, plot_curves, truncate_metrics
from engine.model import JEPA, Encoder, encode_targets, set_fused_layernorm
from engine.objective import collapse_stats, jepa_loss, mae_targets, spread_penalty
from engine.ops import EMATarget
from engine.schedules import cosine_ramp, warmup_cosine
from engine.zero3 import PartitionedTarget, gathered, target_deepspeed_config
from modalities.options import options_to_dict
from pipelines.shards import ShardDataset


class NonFiniteLoss(RuntimeError):
    """The loss was NaN or infinite; the message names the step."""


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    skips: int = 0  # micro-batches skipped for a non-finite loss
    samples: int = 0  # samples consumed by this rank (skipped ones included)


def check_resumable(
    saved: dict[str, Any], cfg: Config, where: Path, resolve: Callable[[Any], Any] | None = None
) -> None:
    """Raise CheckpointError naming the config keys that differ from the checkpoint's.
    `resolve`: maps a `modality:` section to the modality's parsed options (as plain values),
    so the same options spelled differently (a default left out or written, `[a, b]` or
    `a,b`) still resume."""
    legacy = sorted(k for k, _ in flatten(saved) if is_legacy_key(k))
    if legacy:
        raise CheckpointError(
            f"{where}: this checkpoint predates modality options ({', '.join(legacy)} are "
            "the modality's `modality:` keys now); it still loads for engine.probe and "
            "engine.export, but an exact resume needs the version that wrote it"
        )
    saved, current = dict(saved), cfg.to_dict()
    # data.sources' paths may change (a moved dataset), like data.path; count and weights not
    for tree in (saved, current):
        if "data" in tree and tree["data"].get("sources"):
            tree["data"] = {
                **tree["data"],
                "sources": [{"weight": s.get("weight")} for s in tree["data"]["sources"]],
            }
    if resolve is not None:
        saved["modality"] = resolve(saved.get("modality") or {})
        current["modality"] = resolve(current["modality"])
    old, new = dict(flatten(saved)), dict(flatten(current))
    free = resumable_keys()
    bad = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in free)
    if bad:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in bad)
        raise CheckpointError(f"{where}: cannot resume exactly, the config changed ({detail})")


def check_several(cfg: Config, names: list[str]) -> None:
    """A shared trunk over several modalities (`names`): ConfigError naming what it does not
    support yet (MAE, ZeRO-3) and options not under a modality's name."""
    listed = ", ".join(names)
    if cfg.loss.objective == "mae":
        raise ConfigError(
            f"loss.objective=mae: MAE's predictor regresses one modality's patches; these "
            f"sources hold {listed} (use the jepa objective)"
        )
    if cfg.train.zero_stage == 3:
        raise ConfigError(
            f"train.zero_stage=3 with several modalities ({listed}) is not supported yet: "
            "ZeRO-3 replays a trace of the parameters each forward fetches, and each batch "
            "here runs one modality's embedder and leaves the others unused (untried); use "
            "train.zero_stage=2"
        )
    if cfg.modality and not is_keyed(cfg.modality):
        key = next(iter(cfg.modality))
        raise ConfigError(
            f"modality.{key}: with several modalities ({listed}) each one's options sit "
            f"under its name (modality.{names[0]}.{key})"
        )


def param_groups(model: torch.nn.Module) -> tuple[list[dict[str, Any]], list[tuple[bool, str]]]:
    """AdamW groups: matrices decay; biases, norms and other 1-D parameters do not (I-JEPA).
    A shared trunk (one embedder per modality) puts each embedder's parameters in groups of
    their own, so a step can leave an absent modality's embedder still (`optim.idle_embedders`).
    Returns the groups and, for each, (decays, modality: "" for the trunk); empty groups are
    left out. A parameter built under ZeRO-3's zero.Init is an empty placeholder: its shape is
    `ds_shape`."""

    def ndim(p: torch.Tensor) -> int:
        return len(getattr(p, "ds_shape", p.shape))

    embedder = model.encoder.embedder if hasattr(model, "encoder") else None
    owner: dict[int, str] = {}
    if isinstance(embedder, torch.nn.ModuleDict):
        for name, emb in embedder.items():
            owner.update((id(p), name) for p in emb.parameters())
    groups, roles = [], []
    for key in ["", *sorted(set(owner.values()))]:
        params = [p for p in model.parameters() if p.requires_grad and owner.get(id(p), "") == key]
        for decays in (True, False):
            chosen = [p for p in params if (ndim(p) >= 2) == decays]
            if chosen or not key:  # the trunk's two groups always exist (checkpoint layout)
                groups.append({"params": chosen, "weight_decay": 0.0})
                roles.append((decays, key))
    return groups, roles


def group_rates(
    roles: list[tuple[bool, str]], lr: float, wd: float, active: set[str] | None = None
) -> list[tuple[float, float]]:
    """(lr, weight decay) of each optimizer group (`param_groups`' roles): decay only where the
    group decays; `active` (the step's modalities, with optim.idle_embedders=still): the other
    modalities' embedder groups get (0, 0)."""
    out = []
    for decays, modality in roles:
        still = active is not None and modality != "" and modality not in active
        out.append((0.0, 0.0) if still else (lr, wd if decays else 0.0))
    return out


def deepspeed_config(cfg: Config, bf16: bool, load_universal: bool = False) -> dict[str, Any]:
    """`load_universal`: this run resumes from DeepSpeed's universal checkpoint (a ZeRO-1/2/3
    checkpoint saved at another world size, converted: engine.checkpoint.universal_tag)."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage >= 1:
        zero.update(reduce_bucket_size=t.zero_bucket, allgather_bucket_size=t.zero_bucket)
    if t.zero_stage == 3:
        zero.update(
            stage3_max_live_parameters=t.zero3_max_live,
            stage3_max_reuse_distance=t.zero3_reuse_distance,
            stage3_prefetch_bucket_size=t.zero3_prefetch,
        )
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "checkpoint": {"load_universal": load_universal},
    }


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, info: DistInfo, resume: Path | None) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.cfg, self.run_dir, self.info = cfg, run_dir, info
        # One dataset (data.path) or several (data.sources): cohorts of one modality, or
        # several modalities sharing the trunk, each with its own embedder and masker.
        self.sources = DataSources(cfg)
        datasets = [ShardDataset(s.path, verify=cfg.data.verify) for s in self.sources.sources]
        self.modality_name = self.sources.names[0]
        self.modality = self.sources.modalities[self.modality_name]
        self.several = self.sources.several
        if self.several:
            check_several(cfg, self.sources.names)
        # Saved with every checkpoint: some embedders are built from them (Brain-JEPA's
        # gradient positions), and a trained encoder must load without its dataset. Each
        # modality's embedder is built from its first source's statistics.
        by_name = {
            n: datasets[self.sources.sources.index(self.sources.first(n))].stats
            for n in self.sources.names
        }
        self.stats = by_name[self.modality_name]
        self.embedder_stats = by_name if self.several else None
        patch_dim = max(self._check_first_record(ds) for ds in datasets)
        self.bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and info.device.type == "cuda"
        )

        if info.device.type == "cuda" and info.rank == 0:
            for note in kernel_notes(cfg):
                print(f"engine.train: note: {note}", file=sys.stderr, flush=True)
        torch.manual_seed(cfg.train.seed)
        self.mae = cfg.loss.objective == "mae"
        out_dim = patch_dim if self.mae else None  # MAE's predictor outputs patches
        self.zero3 = cfg.train.zero_stage == 3
        # A ZeRO-1/2/3 checkpoint from another world size loads through DeepSpeed's universal
        # format, which the engine must be told of when it is built.
        self.universal = (
            resume is not None
            and cfg.train.zero_stage in (1, 2, 3)
            and int(read_state(resume).get("world", 0)) != info.world
        )
        ds_config = deepspeed_config(cfg, self.bf16, self.universal)
        # Under ZeRO-3 the trunk is built partitioned (deepspeed.zero.Init: each layer's
        # parameters are split over the ranks as soon as it is built), so no rank holds the
        # model whole: a model larger than one device starts. The modality's embedder is built
        # first and whole (it is small, and may set its own layers' weights as it is built, as
        # S-JEPA's channel embedding does); DeepSpeed partitions it at initialize.
        embedder = self._embedders()
        with deepspeed.zero.Init(config_dict_or_path=ds_config) if self.zero3 else nullcontext():
            model = JEPA(embedder, cfg.model, out_dim)
        model = model.to(info.device)
        set_fused_layernorm(model, cfg.train.fused_layernorm)
        model.keep_context = cfg.loss.spread > 0
        self.jepa = model
        # The module's forward hands batches to the graphs (eager on CPU), so DeepSpeed's engine
        # still wraps every call. With several ranks they replay or run eagerly together.
        # ZeRO-3 gathers each layer's parameters from Python hooks, which no graph replays: its
        # step runs eagerly (engine.config.kernel_notes says so on a GPU).
        # loss.spread reads the context features the step's forward keeps: eager too.
        model.cuda_graphs = GraphedJEPA(
            model,
            cfg.train.cuda_graph_step
            and not self.zero3
            and not self.several
            and cfg.loss.spread == 0,
            ratio=cfg.train.cuda_graph_ratio,
            max_graphs=cfg.train.cuda_graph_buckets,
            agree=self._every_rank if info.world > 1 else None,
        )
        # The target is an fp32 copy kept outside DeepSpeed: an EMA step of 1 - m <= 0.004 is
        # below bf16 resolution, and the engine must not shard or cast it.
        # MAE has no target encoder: the copy then follows the context encoder exactly
        # (momentum 0), so probes and exports of "the target" read the trained encoder.
        # Under ZeRO-3 the target is partitioned like the context encoder, each rank updating
        # its own partitions (engine.zero3): an encoder built partitioned (its own draws leave
        # the seeded stream untouched) that takes the context encoder's partitions at bind().
        ema = (0.0, 0.0) if self.mae else (cfg.ema.start, cfg.ema.end)
        self.target: Encoder | PartitionedTarget
        if self.zero3:
            devices = [info.device] if info.device.type == "cuda" else []
            tcfg = target_deepspeed_config(cfg.data.batch_size, cfg.train.zero3_prefetch)
            with torch.random.fork_rng(devices):
                target_embedder = self._embedders()
                with deepspeed.zero.Init(config_dict_or_path=tcfg):
                    built = Encoder(target_embedder, cfg.model)
            self.target = PartitionedTarget(
                built, cfg.data.batch_size, cfg.train.steps, *ema, prefetch=cfg.train.zero3_prefetch
            )
            self.ema: EMATarget | PartitionedTarget = self.target
        else:
            self.target = copy.deepcopy(model.encoder).float().requires_grad_(False)
            self.ema = EMATarget(self.target, cfg.train.steps, *ema)
        # Whitening's eigendecomposition checks its result on the host: no graph capture.
        graph_target = (
            cfg.train.cuda_graph_target
            and cfg.loss.target_norm != "position_whitened"
            and not self.zero3
            and not self.several
        )
        self.target_features = GraphedTargetFeatures(
            self.target, graph_target, norm=cfg.loss.target_norm
        )
        self._warned: set[str] = set()
        o = cfg.optim
        groups, self.group_roles = param_groups(model)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
        install_safe_loader(self.engine)
        if isinstance(self.target, PartitionedTarget):
            self.target.bind(self.engine.module.encoder)
        self.loader = JEPALoader(cfg, None, info.rank, info.world, self.sources)
        self.state = RunState()
        if resume is not None:
            self._resume(resume)
        elif info.rank == 0:
            truncate_metrics(run_dir, 0)
        self.metrics = MetricsLogger(
            run_dir, cfg.train.steps, self.state.step, info.rank == 0, cfg.train.progress
        )

    # -- set-up

    def _check_first_record(self, ds: ShardDataset) -> int:
        """Tokenize and mask record 0 here, so a modality/config mismatch fails before workers;
        returns the token width (what MAE's predictor regresses)."""
        if len(ds) == 0:
            raise ValueError(f"{ds.root}: the dataset has no records")
        modality = self.sources.modalities[ds.modality]
        opts = method_options(modality, self.cfg)  # ConfigError names a bad modality.* key
        t = modality.tokenize(ds[0], ds.stats, opts)
        modality.masker(opts)(sample_rng(0, 0, 0), t["coords"])
        return int(t["tokens"].shape[1])

    def _embedders(self) -> Any:
        """The modality's embedder, or a {name: embedder} mapping for a shared trunk."""
        if not self.several:
            return build_embedder(self.modality, self.cfg, self.stats)
        assert self.embedder_stats is not None
        return {
            n: build_embedder(self.sources.modalities[n], self.cfg, self.embedder_stats[n])
            for n in self.sources.names
        }

    def _elastic(self, saved: dict[str, Any], path: Path) -> dict[str, Any]:
        """Check that a checkpoint saved at another world size can continue here; return its
        config with the per-rank batch size this run uses (the global batch must not change)."""
        old_world, world = int(saved.get("world", 0)), self.info.world
        where = f"{path}: saved by {old_world} processes, this run has {world}"
        config = copy.deepcopy(saved["config"])
        old_batch = int(config["data"]["batch_size"])
        old_global, new_global = old_world * old_batch, world * self.cfg.data.batch_size
        if old_global != new_global:
            hint = (
                f"; set data.batch_size={old_global // world}"
                if old_global % world == 0
                else f"; {old_global} samples do not split over {world} processes"
            )
            raise CheckpointError(
                f"{where}; the global batch must stay {old_global} samples ({old_world} x "
                f"{old_batch}), this run's is {new_global} ({world} x "
                f"{self.cfg.data.batch_size}){hint}"
            )
        config["data"]["batch_size"] = self.cfg.data.batch_size
        return config

    def _resolved_options(self, section: dict[str, Any]) -> dict[str, Any]:
        """A `modality:` section as its modalities' parsed options, plain values."""
        mods = self.sources.modalities
        if self.several:
            return {
                n: options_to_dict(mods[n].method_options(modality_section(section, n)))
                for n in self.sources.names
            }
        return options_to_dict(self.modality.method_options(section))

    def _resume(self, path: Path) -> None:
        saved = read_state(path)
        elastic = int(saved.get("world", 0)) != self.info.world
        check_resumable(
            self._elastic(saved, path) if elastic else saved["config"],
            self.cfg,
            path,
            self._resolved_options,
        )
        tag = universal_tag(path, self.info.rank) if self.universal else DS_TAG
        state = load_checkpoint(
            path, self.engine, self.target, self.info.rank, self.info.world, elastic, tag
        )
        if elastic:
            # samples consumed per rank: the same global count spread over this world
            run = dict(state["run"])
            run["samples"] = run["samples"] * int(state["world"]) // self.info.world
            state = {**state, "run": run}
            if self.info.rank == 0:
                print(
                    f"engine.train: elastic resume: {state['world']} -> {self.info.world} "
                    f"processes at step {run['step']}, global batch unchanged",
                    file=sys.stderr,
                    flush=True,
                )
        self.state = RunState(**state["run"])
        self.ema.step = int(state["ema_step"])
        self.loader.load_state_dict(state["data"])
        if self.info.rank == 0:
            truncate_metrics(self.run_dir, self.state.step)

    # -- one optimizer step

    def _set_schedules(self, step: int, active: set[str] | None = None) -> dict[str, float]:
        """This step's learning rate and weight decay on every group. `active`: with
        `optim.idle_embedders=still`, the modalities this step's micro-batches hold so far; the
        other embedders' groups get lr 0 and no decay (their Adam moments still see a zero
        gradient)."""
        c, o = self.cfg, self.cfg.optim
        warmup = int(o.warmup_frac * c.train.steps)
        lr = warmup_cosine(step, c.train.steps, o.lr, o.min_lr, warmup)
        wd = cosine_ramp(step, c.train.steps, o.weight_decay, o.final_weight_decay)
        rates = group_rates(self.group_roles, lr, wd, active)
        for group, (g_lr, g_wd) in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"], group["weight_decay"] = g_lr, g_wd
        return {"lr": lr, "wd": wd}

    def _every_rank(self, ok: bool) -> bool:
        """True when `ok` holds on every rank (a MIN all-reduce; a host sync)."""
        flag = torch.tensor([1.0 if ok else 0.0], device=self.info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _any_rank_nonfinite(self, loss: torch.Tensor) -> bool:
        flag = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        if self.info.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = batch.to(self.info.device)
        pred = self.engine(batch)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.bf16 and self.info.device.type == "cuda"
            else nullcontext()
        )
        if self.mae:
            tgt = mae_targets(batch)
        else:
            with autocast:
                tgt = self.target_features(batch)
        loss = jepa_loss(pred, tgt.float(), self.cfg.loss.kind, self.cfg.loss.beta)
        if self.cfg.loss.spread > 0:
            penalty = spread_penalty(self.jepa.last_context, batch)
            self.jepa.last_context = None
            self._spread = penalty.detach()
            loss = loss + self.cfg.loss.spread * penalty
        self._last_batch = batch
        return loss, pred.detach(), tgt

    def train_step(self, batches: Iterator[PackedBatch]) -> dict[str, float]:
        """grad_accum finite micro-batches, one optimizer step, one EMA update."""
        c = self.cfg
        # optim.idle_embedders=still: embedders wake as their modality's micro-batches arrive
        # (the optimizer steps at the last one, after every group's rate is set)
        still = self.several and c.optim.idle_embedders == "still"
        active: set[str] | None = set() if still else None
        sched = self._set_schedules(self.state.step, active)
        losses: list[torch.Tensor] = []
        kinds: list[str] = []  # each micro-batch's modality (a run of several)
        while len(losses) < c.optim.grad_accum:
            batch = next(batches)
            if active is not None and batch.modality not in active:
                active.add(batch.modality)
                self._set_schedules(self.state.step, active)
            self.state.samples += batch.n_samples
            loss, pred, tgt = self._forward(batch)
            if self._any_rank_nonfinite(loss):
                where = f"step {self.state.step + 1} (epoch {self.loader.epoch})"
                if c.train.nonfinite == "stop":
                    raise NonFiniteLoss(f"non-finite loss at {where}; stopping")
                self.state.skips += 1
                if self.state.skips > c.train.max_skips:
                    raise NonFiniteLoss(
                        f"non-finite loss at {where}: {self.state.skips} micro-batches skipped, "
                        f"more than train.max_skips={c.train.max_skips}; stopping"
                    )
                continue  # every rank skips this micro-batch; the next one takes its place
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
            kinds.append(batch.modality)
        if isinstance(self.ema, PartitionedTarget):
            momentum = self.ema.update()  # this rank's partitions only: no communication
        else:
            momentum = self.ema.update(self.engine.module.encoder)
        self.state.step += 1
        # Every rank's micro-batch k is a slice of the same global batch, so of one modality:
        # each modality's mean is reduced like the overall one.
        stacked = torch.stack(losses)
        names = sorted(set(kinds)) if self.several else []
        picks = [torch.tensor([k == n for k in kinds], device=stacked.device) for n in names]
        means = torch.stack([stacked.mean()] + [stacked[m].mean() for m in picks])
        if self.info.world > 1:
            dist.all_reduce(means)
            means /= self.info.world
        out = {"loss": float(means[0]), **sched, "momentum": momentum}
        out.update({f"loss_{n}": float(v) for n, v in zip(names, means[1:], strict=True)})
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        out.update(collapse_stats(pred, tgt))
        if c.loss.spread > 0:
            out["spread"] = float(self._spread)  # the last micro-batch's penalty, unweighted
        every = c.train.diag_every
        if every and (self.state.step % every == 0 or self.state.step == 1):
            out.update(self.diagnostics(self._last_batch, tgt, out["target_std"]))
        return out

    @torch.no_grad()
    def diagnostics(
        self, batch: PackedBatch, tgt: torch.Tensor, target_std: float
    ) -> dict[str, Any]:
        """engine.diagnostics on this step's batch (an extra eager forward of the target), and
        a warning, once per kind, when a number trips its threshold (`target_std`: the step's,
        from `collapse_stats`)."""
        h = encode_targets(self.target, batch)
        out: dict[str, Any] = target_diagnostics(h, tgt, batch)
        n0 = int(batch.n_tokens[0])
        if isinstance(self.target, PartitionedTarget):
            ent = attention_entropy(
                self.target.encoder,
                batch.tokens[0, :n0],
                batch.coords[0, :n0],
                gathered,
                modality=batch.modality,
            )
        else:
            ent = attention_entropy(
                self.target, batch.tokens[0, :n0], batch.coords[0, :n0], modality=batch.modality
            )
        out.update({f"attn_entropy_{i}": v for i, v in enumerate(ent)})
        if self.info.rank == 0:
            record = {**out, "target_std": target_std}
            width = int(tgt.shape[-1])
            for msg in check(record, width, "mae" if self.mae else self.cfg.loss.target_norm):
                kind = msg.split(":")[0]
                if kind not in self._warned:
                    self._warned.add(kind)
                    print(
                        f"engine.train: warning: step {self.state.step}: {msg}",
                        file=sys.stderr,
                        flush=True,
                    )
        return out

    # -- the loop

    def save(self) -> Path:
        state = {
            "run": asdict(self.state),
            "ema_step": self.ema.step,
            "data": self.loader.state_dict(),
            "world": self.info.world,
            "modality": self.modality_name,
            "config": self.cfg.to_dict(),
            "stats": self.stats,
        }
        if self.embedder_stats is not None:  # a shared trunk: each modality's statistics
            state["embedders"] = self.embedder_stats
        return save_checkpoint(
            self.run_dir,
            self.state.step,
            self.engine,
            self.target,
            state,
            self.info.rank,
            self.cfg.train.keep_checkpoints,
        )

    def run(self) -> dict[str, Any]:
        """Train to cfg.train.steps; return a summary (first/last loss, samples/s, paths)."""
        t = self.cfg.train
        start_step = self.state.step
        batches = iter(self.loader)
        first_loss = last_loss = float("nan")
        t0 = t_log = time.perf_counter()
        samples_log = self.state.samples
        last_ckpt = None
        try:
            while self.state.step < t.steps:
                rec = self.train_step(batches)
                step = self.state.step
                last_loss = rec["loss"]
                if step == start_step + 1:
                    first_loss = last_loss
                now = time.perf_counter()
                rate = (self.state.samples - samples_log) * self.info.world / max(now - t_log, 1e-9)
                if step % t.log_every == 0 or step == t.steps:
                    self.metrics.log(
                        {
                            "step": step,
                            **rec,
                            "samples_per_s": rate,
                            "skips": self.state.skips,
                            "epoch": self.loader.epoch,
                        }
                    )
                self.metrics.advance(
                    1, {"loss": rec["loss"], "lr": rec["lr"], "m": rec["momentum"], "sps": rate}
                )
                t_log, samples_log = now, self.state.samples
                if (t.save_every and step % t.save_every == 0) or step == t.steps:
                    last_ckpt = self.save()
        finally:
            self.metrics.close()
        seconds = time.perf_counter() - t0
        plot = plot_curves(self.run_dir) if self.info.rank == 0 else None
        steps_done = self.state.step - start_step
        samples = steps_done * self.cfg.data.batch_size * self.cfg.optim.grad_accum
        return {
            "steps": self.state.step,
            "steps_run": steps_done,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "seconds": seconds,
            "samples_per_s": samples * self.info.world / max(seconds, 1e-9),
            "skips": self.state.skips,
            "checkpoint": str(last_ckpt) if last_ckpt else None,
            "plot": str(plot) if plot else None,
        }
