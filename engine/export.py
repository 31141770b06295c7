"""`python -m engine.export RUN_DIR OUT`: a trained encoder as safetensors + config JSON.

OUT/encoder.safetensors holds the encoder's state dict (fp32); OUT/config.json the resolved
training config, the modality and which encoder it is. Load it back without DeepSpeed:

    from engine.export import load_encoder
    encoder, cfg, modality = load_encoder("OUT")          # engine.model.Encoder, eval mode
    # or, with nothing of ours: safetensors.torch.load_file("OUT/encoder.safetensors")

`load_encoder` also accepts a run directory (its latest complete checkpoint) or a checkpoint
directory. Imports torch, safetensors and engine; DeepSpeed only to read the context encoder out
of a ZeRO checkpoint (its own consolidation, `deepspeed.utils.zero_to_fp32`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import (
    DS_TAG,
    CheckpointError,
    consolidate_target,
    latest_checkpoint,
    read_state,
    weights_only_loads,
)
from engine.config import Config, config_from_dict
from engine.data import build_embedder, method_options, resolve_modality
from engine.model import JEPA, Encoder
from modalities import Modality
from modalities.options import options_to_dict

EXPORT_FORMAT = "jepa-forge-encoder"
EXPORT_VERSION = 1


def _checkpoint_dir(path: Path) -> Path:
    if (path / "state.json").is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path}: no complete checkpoint (nor an export) found")
    return ckpt


def _checkpoint_weights(ckpt: Path, which: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """The encoder's fp32 weights in checkpoint `ckpt`. target: the EMA target we save
    ourselves (under ZeRO-3 as per-rank partitions, joined here). context: the trained encoder
    inside DeepSpeed's checkpoint; under ZeRO (stage >= 1) through DeepSpeed's own consolidation
    (`deepspeed.utils.zero_to_fp32`: the fp32 master weights merged from every rank's optimizer
    partition, so a bf16 run exports its fp32 masters, not the bf16 module copy), at stage 0
    from the module states it writes."""
    if which == "target":
        return consolidate_target(ckpt)
    if which != "context":
        raise ValueError(f"encoder must be 'target' or 'context', got {which!r}")
    prefix = "encoder."
    states = _trained_states(ckpt, zero_stage)
    return {k[len(prefix) :]: v.float() for k, v in states.items() if k.startswith(prefix)}


def _trained_states(ckpt: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """The trained module's (context encoder and predictor) states in checkpoint `ckpt`."""
    if zero_stage >= 1:
        # DeepSpeed's reader (imported here only: loading a target or an export never needs
        # DeepSpeed). It asks torch.load to unpickle; `weights_only_loads` holds it to tensors
        # and DeepSpeed's own types, and its progress prints go to stderr, not into our output.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with weights_only_loads(), contextlib.redirect_stdout(sys.stderr):
                states = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DS_TAG)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{ckpt / DS_TAG}: holds objects other than tensors and DeepSpeed's own, which "
                f"are not unpickled ({str(e).splitlines()[0]})"
            ) from None
    else:
        states = torch.load(
            ckpt / DS_TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
        )["module"]
    return states


def _modality(cfg: Config, modality_name: str) -> Modality:
    return resolve_modality(cfg.data.modality, modality_name)


def _build(
    cfg: Config,
    modality: Modality,
    weights: dict[str, torch.Tensor],
    stats: dict[str, Any] | None,
) -> Encoder:
    # stats None: a checkpoint from before they were saved; a modality that needs them (fMRI's
    # gradient positions) says so.
    encoder = Encoder(build_embedder(modality, cfg, stats), cfg.model)
    encoder.load_state_dict(weights, strict=True)
    return encoder.eval().requires_grad_(False)


def _chosen(names: list[str], modality: str | None, where: Path) -> str:
    """The modality to load from a trunk that embeds `names` (a run of several modalities)."""
    if modality is None:
        raise CheckpointError(
            f"{where}: this run's shared trunk embeds {', '.join(names)}; name the modality "
            "to load (engine.export --modality, or the dataset a probe reads)"
        )
    if modality not in names:
        raise CheckpointError(
            f"{where}: this run's shared trunk embeds {', '.join(names)}, not {modality!r}"
        )
    return modality


def _one_embedder(weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A shared trunk's weights with only modality `name`'s embedder, under `embedder.*`:
    the state dict of that modality's own encoder."""
    out = {}
    for k, v in weights.items():
        if k.startswith("embedder."):
            head, _, rest = k[len("embedder.") :].partition(".")
            if head == name:
                out[f"embedder.{rest}"] = v
        else:
            out[k] = v
    return out


def _check_same(have: str, modality: str | None, where: Path) -> None:
    if modality is not None and modality != have:
        raise CheckpointError(
            f"{where}: its encoder was trained on {have!r} records, not {modality!r}"
        )


def load_encoder(
    path: str | Path, which: str = "target", modality: str | None = None
) -> tuple[Encoder, Config, Modality]:
    """An encoder from an export directory, a checkpoint directory or a run directory.
    `modality`: the manifest's modality name of the records it will read; from a run of several
    modalities (a shared trunk) it picks the embedder, otherwise it must be the run's own."""
    path = Path(path)
    meta_path = path / "config.json"
    if meta_path.is_file() and (path / "encoder.safetensors").is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != EXPORT_FORMAT or meta.get("version") != EXPORT_VERSION:
            raise CheckpointError(f"{meta_path}: not a {EXPORT_FORMAT} v{EXPORT_VERSION} export")
        if meta["encoder"] != which:
            raise CheckpointError(f"{path}: this export holds the {meta['encoder']} encoder")
        _check_same(meta["modality"], modality, path)
        cfg = config_from_dict(meta["config"])
        mod = _modality(cfg, meta["modality"])
        weights = load_file(str(path / "encoder.safetensors"))
        return _build(cfg, mod, weights, meta.get("stats")), cfg, mod
    ckpt = _checkpoint_dir(path)
    state = read_state(ckpt)
    cfg = config_from_dict(state["config"])
    weights = _checkpoint_weights(ckpt, which, cfg.train.zero_stage)
    shared = state.get("embedders")
    if shared:  # a trunk shared by several modalities: the chosen one's embedder
        name = _chosen(list(shared), modality, ckpt)
        mod = _modality(cfg, name)
        return _build(cfg, mod, _one_embedder(weights, name), shared[name]), cfg, mod
    _check_same(state["modality"], modality, ckpt)
    mod = _modality(cfg, state["modality"])
    return _build(cfg, mod, weights, state.get("stats")), cfg, mod


def load_jepa(path: str | Path) -> tuple[JEPA, Config, Modality]:
    """The trained context encoder with its predictor (what the objective trained, in eval
    mode, frozen) from a checkpoint or run directory of one modality: to ask what the predictor
    predicts, which an encoder export does not hold. MAE runs (a pixel predictor) included."""
    ckpt = _checkpoint_dir(Path(path))
    state = read_state(ckpt)
    cfg = config_from_dict(state["config"])
    if state.get("embedders"):
        raise CheckpointError(f"{ckpt}: a trunk shared by several modalities; load_jepa reads one")
    mod = _modality(cfg, state["modality"])
    weights = {k: v.float() for k, v in _trained_states(ckpt, cfg.train.zero_stage).items()}
    out = weights["predictor.out.weight"].shape[0]
    embedder = build_embedder(mod, cfg, state.get("stats"))
    model = JEPA(embedder, cfg.model, out if cfg.loss.objective == "mae" else None)
    model.load_state_dict(weights, strict=True)
    return model.eval().requires_grad_(False), cfg, mod


def random_init_encoder(modality: Modality, cfg: Config, stats: Any, seed: int) -> Encoder:
    """The run's encoder at the random init `torch.manual_seed(seed)` draws, in eval mode: the
    baseline a probe sets beside the pretrained encoder."""
    torch.manual_seed(seed)
    return Encoder(build_embedder(modality, cfg, stats), cfg.model).eval()


def load_run_and_baseline(
    spec: str, stats: Any, which: str = "target"
) -> tuple[str, Encoder, Encoder, Config, Modality]:
    """ "RUN:SEED" -> (RUN, its `which` encoder (target or context), the same encoder at SEED's
    random init, config, modality), as the control probes in benchmarks/ compare them.
    ValueError on a bad spec."""
    run, _, seed = spec.rpartition(":")
    if not run or not seed.isdigit():
        raise ValueError(f"--run expects RUN:SEED, got {spec!r}")
    encoder, cfg, modality = load_encoder(run, which)
    return run, encoder, random_init_encoder(modality, cfg, stats, int(seed)), cfg, modality


def export(
    run_dir: str | Path, out: str | Path, which: str = "target", modality: str | None = None
) -> Path:
    """Write OUT/encoder.safetensors and OUT/config.json; returns OUT. `modality`: which
    modality's encoder (its embedder and the shared trunk) a run of several modalities exports."""
    ckpt = _checkpoint_dir(Path(run_dir))
    state = read_state(ckpt)
    # proves the weights load strictly
    encoder, cfg, mod = load_encoder(ckpt, which, modality)
    name = modality if state.get("embedders") else state["modality"]
    stats = state["embedders"][name] if state.get("embedders") else state.get("stats")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(out / "encoder.safetensors"), metadata={"format": EXPORT_FORMAT})
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "encoder": which,
        "step": state["run"]["step"],
        "modality": name,
        # the modality's options resolved (defaults filled in, an older run's model.patch_len /
        # mask.* mapped; a shared trunk's one modality's), so the export reads back without
        # knowing how they were written
        "config": {
            **cfg.to_dict(),
            "modality": options_to_dict(method_options(mod, cfg)),
        },
        "stats": stats,
        "checkpoint": str(ckpt),
    }
    if state.get("embedders"):
        meta["trunk_modalities"] = list(state["embedders"])
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.export",
        description="Export a trained encoder as safetensors + config JSON (no DeepSpeed needed).",
    )
    p.add_argument("run_dir", help="run directory (latest complete checkpoint) or checkpoint dir")
    p.add_argument("out", help="output directory")
    p.add_argument(
        "--encoder",
        choices=("target", "context"),
        default="target",
        help="the EMA target encoder (default, what I-JEPA evaluates) or the context one",
    )
    p.add_argument(
        "--modality",
        help="a run of several modalities (a shared trunk): whose embedder to export with it",
    )
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.encoder, args.modality)
    except (CheckpointError, ValueError, OSError, RuntimeError) as e:
        print(f"engine.export: error: {e}", file=sys.stderr)
        return 1
    n = sum(t.numel() for t in load_file(str(out / "encoder.safetensors")).values())
    print(f"exported {args.encoder} encoder ({n} parameters) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
