"""The audio comodulation control (modalities/audio/modulation.py): what pretrained token and
record features carry, beside the same encoder at its random init.

- token: each patch's modulation rate (the mean log-rate over its 16 frames, from the cohort's
  `rates.npy`), predicted from the patch's encoder features by a ridge regression (R^2, 5 folds
  grouped by file: `engine.probe.token_probe`).
- token, when the cohort has `phases.npy`: each patch's place in its band's swing (the mean
  sine and cosine of the band's modulation phase over its frames), the feature the bands'
  alignment is made of, and that alignment itself (the mean cosine of the band's phase offset
  against its neighbouring bands': `sync` per token), through the same token probe.
- record: the `sync` label (comodulated / independent) from mean+std pooled features, a
  logistic probe trained on `--labels` files per draw, `--folds` draws, tested on the rest
  (`engine.probe.linear_probe`, as `engine.probe --labels N --pool meanstd`).
- record: the plain class `sound` (noise / tone / chirp / bursts, from the cohort's
  `labels.csv`), the same pooled features and probe: what one patch shows, which random
  features should read as well as pretrained ones.
- `--oracle`: `sync_score` (one number per file, no fitting beyond a threshold) through the same
  probe: that the label is readable at all; and `rate_track` (one number per token: its band's
  instantaneous modulation rate over the patch's frames) through the token probe: how much of
  the token latent the patch's band and time neighbours give.
- `--rate-gate EPOCHS`: the token latent's supervised gate. Each `--run`'s encoder at its random
  init (`--gate-arms`: and/or pretrained), with a linear head on every token, trained end to end
  to regress the tokens' log-rate on one half of the files (or `--gate-files N` of it: label
  efficiency) for EPOCHS epochs (MSE, AdamW lr 1e-3, batches of 16 files) and tested on the
  other half (R^2, and on the training files: whether a fit memorises): that the architecture
  can learn the latent at all (the reference for the token probe), and how fast from few
  labelled files. `--gate-alone`: every patch encoded as a record of its own (the rate from
  one patch and its position, nonlinearly: what no context gives).
- `--band-error`: what the predictor knows. Each run's JEPA (context encoder, predictor and
  target encoder; and the same at its random init) predicts each band of every record from the
  other bands; the per-band log errors [bands] go through the record probe for `sync`, and the
  mean error of each class is printed. With comodulated bands a masked band is predictable
  from the others; a predictor that uses it errs less on those files.
- `--patches`: the tokens themselves (each record's 16 x 16 log-mel patches as the first `--run`'s
  tokenizer cuts them, no encoder): each patch through the token probe (how much of the rate a
  linear function of one patch carries), and mean+std pooled through the record probe: how much of
  `sync` a per-patch statistic reads (the control's claim is little; on the generator's
  peak-normalised version 2, pooled patch embeddings read it at 0.89 with 32 labels).

    python benchmarks/audio_modulation_probe.py --data DS --raw RAW --run RUN:SEED [...] \
        [--labels 8] [--folds 10] [--oracle] [--patches] \
        [--rate-gate EPOCHS [--gate-files N] [--gate-arms ARM...] [--gate-alone]] \
        [--band-error] [--encoder target|context] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on sys.path and its kernels.py would shadow the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from engine.batch import Sample, pack, pack_tokens  # noqa: E402
from engine.data import build_embedder, method_options  # noqa: E402
from engine.export import load_encoder, load_jepa, load_run_and_baseline  # noqa: E402
from engine.model import JEPA, target_features  # noqa: E402
from engine.probe import encode_records, linear_probe, read_column, token_probe  # noqa: E402
from modalities.audio.modulation import HOP, RATE, file_index, rate_track, sync_score  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402


def token_rates(record: dict, rates: np.ndarray, coords: np.ndarray, patch_time: int) -> np.ndarray:
    """Each token's mean log-rate over its frames (coords[:, 1]: the time patch)."""
    r = np.log(rates[file_index(record["source"])])
    start = int(round(float(record["offset_s"]) * 100))  # 10-ms frames
    out = []
    for t in coords[:, 1].astype(int):
        lo = start + t * patch_time
        seg = r[lo : lo + patch_time]
        out.append(seg.mean() if len(seg) else np.nan)
    return np.asarray(out)


def token_swings(
    record: dict, rates: np.ndarray, phases: np.ndarray, coords: np.ndarray, patch_time: int
) -> np.ndarray:
    """Each token's place in its band's swing [N, 2]: the mean sine and cosine of the band's
    modulation phase over the patch's frames (the phase from the rates, plus the band's offset
    from phases.npy; coords[:, 0] is the band's row)."""
    j = file_index(record["source"])
    phase = 2 * np.pi * np.cumsum(rates[j].astype(np.float64)) * (HOP / RATE)
    start = int(round(float(record["offset_s"]) * 100))
    out = []
    for row, t in coords.astype(int):
        seg = phase[start + t * patch_time : start + (t + 1) * patch_time] + phases[j, row]
        out.append([np.sin(seg).mean(), np.cos(seg).mean()])
    return np.asarray(out)


def token_alignments(record: dict, phases: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Each token's band's alignment with its neighbouring bands [N]: the mean cosine of the
    phase offsets' differences (1 in comodulated files; what `sync` is made of, per token)."""
    p = phases[file_index(record["source"])]
    out = []
    for row in coords[:, 0].astype(int):
        near = [n for n in (row - 1, row + 1) if 0 <= n < len(p)]
        out.append(np.mean([np.cos(p[row] - p[n]) for n in near]))
    return np.asarray(out)


def phase_probes(ds, rates, phases, patch_time, toks, kept, res: dict) -> str:
    """The swing and alignment token probes of token features `toks` (coords `kept`) into
    `res`; the printed text."""
    swing = [token_swings(ds[i], rates, phases, c, patch_time) for i, c in enumerate(kept)]
    align = [token_alignments(ds[i], phases, c) for i, c in enumerate(kept)]
    t, a = token_probe(toks, swing, None), token_probe(toks, align, None)
    res["token_swing_r2"] = [t["mean"], t["std"]]
    res["token_alignment_r2"] = [a["mean"], a["std"]]
    return (
        f"swing R2 {t['mean']:.3f} +- {t['std']:.3f}; "
        f"alignment R2 {a['mean']:.3f} +- {a['std']:.3f}"
    )


def features(encoder, cfg, modality, ds, rates, patch_time):
    tokens, targets, pooled, kept = [], [], [], []
    for i, (coords, h) in enumerate(encode_records(encoder, cfg, modality, ds)):
        y = token_rates(ds[i], rates, coords, patch_time)
        keep = np.isfinite(y)
        tokens.append(h.numpy()[keep])
        targets.append(y[keep])
        kept.append(coords[keep])
        pooled.append(torch.cat([h.mean(0), h.std(0, unbiased=False)]).numpy())
    return tokens, targets, np.stack(pooled), kept


def patch_tokens(cfg, modality, ds, rates, patch_time):
    """The patches the encoder reads, no encoder: every record's tokens mean+std pooled
    [records, 2P], and each record's tokens [N_i, P] with their log-rates [N_i] and coords."""
    opts, pooled, toks, targets, kept = method_options(modality, cfg), [], [], [], []
    for i in range(len(ds)):
        t = modality.tokenize(ds[i], ds.stats, opts)
        x = np.asarray(t["tokens"], dtype=np.float64)
        pooled.append(np.concatenate([x.mean(0), x.std(0)]))
        coords = np.asarray(t["coords"])
        y = token_rates(ds[i], rates, coords, patch_time)
        keep = np.isfinite(y)
        toks.append(x[keep])
        targets.append(y[keep])
        kept.append(coords[keep])
    return np.stack(pooled), toks, targets, kept


def oracle_tokens(ds: ShardDataset, rates: np.ndarray, cfg, modality, patch_time: int):
    """Per record: `rate_track` averaged over each token's row and frames [N_i, 1], and the
    tokens' log-rates [N_i]."""
    opts, feats, targets = method_options(modality, cfg), [], []
    for i in range(len(ds)):
        rec = ds[i]
        vf = int(rec["valid_frames"])
        coords = np.asarray(modality.tokenize(rec, ds.stats, opts)["coords"])
        track = rate_track(rec["mel"], valid_frames=vf)
        y = token_rates(rec, rates, coords, patch_time)
        x = np.array(
            [track[r, t * patch_time : (t + 1) * patch_time].mean() for r, t in coords]
            if track.shape[1] >= patch_time
            else [np.nan] * len(coords)
        )
        keep = np.isfinite(y) & np.isfinite(x)
        feats.append(x[keep, None])
        targets.append(y[keep])
    return feats, targets


def rate_gate(
    encoder, cfg, modality, ds, rates, patch_time, epochs, seed, files=0, alone=False, lr=1e-3
):
    """The token latent's supervised fit (module docstring): `encoder` with a linear head on
    every token trained on `files` files of one half (0: all of it), tested on the other half;
    held-out R^2 at ten points of the run. `alone`: every patch is encoded as a record of its
    own (with its position), so the fit reads what one patch shows."""
    # a trainable copy: load_encoder hands out frozen encoders, and the probes reuse this one
    encoder = copy.deepcopy(encoder).requires_grad_(True)
    start = torch.cat([q.detach().flatten().clone() for q in encoder.parameters()])
    opts = method_options(modality, cfg)
    recs = []
    for i in range(len(ds)):
        t = modality.tokenize(ds[i], ds.stats, opts)
        coords = np.asarray(t["coords"])
        y = token_rates(ds[i], rates, coords, patch_time)
        recs.append((np.asarray(t["tokens"], dtype=np.float32), coords, y))
    order = np.random.default_rng(seed).permutation(len(recs))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    if files:
        if files > len(train):
            raise ValueError(f"--gate-files {files}: only {len(train)} files in the training half")
        train = train[:files]
    ys = np.concatenate([recs[i][2] for i in train])
    mu, sd = float(np.nanmean(ys)), float(np.nanstd(ys))
    torch.manual_seed(seed)
    head = torch.nn.Linear(encoder.norm.weight.shape[0], 1)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)

    def run(idx: np.ndarray, learn: bool) -> tuple[np.ndarray, np.ndarray]:
        preds, truth = [], []
        for lo in range(0, len(idx), 16):
            part = [recs[i] for i in idx[lo : lo + 16]]
            if alone:  # one record per patch: [t[k : k + 1], c[k : k + 1], y[k : k + 1]]
                part = [tuple(a[k : k + 1] for a in r) for r in part for k in range(len(r[0]))]
            b = pack_tokens([r[0] for r in part], [r[1] for r in part], modality.position_columns)
            with torch.set_grad_enabled(learn):
                h = encoder.forward_all(b.tokens, b.coords, b.n_tokens, b.packing)
                out = head(h.float()).squeeze(-1)
            y = torch.full(out.shape, float("nan"))
            for j, r in enumerate(part):
                y[j, : len(r[2])] = torch.from_numpy((r[2] - mu) / sd).float()
            keep = torch.isfinite(y)
            if learn:
                opt.zero_grad()
                torch.nn.functional.mse_loss(out[keep], y[keep]).backward()
                opt.step()
            preds.append(out[keep].detach().numpy())
            truth.append(y[keep].numpy())
        return np.concatenate(preds), np.concatenate(truth)

    def r2(idx: np.ndarray) -> float:
        pred, truth = run(idx, False)
        return 1.0 - float(np.sum((pred - truth) ** 2) / np.sum((truth - truth.mean()) ** 2))

    curve: dict[int, float] = {}
    fit: dict[int, float] = {}
    rng = np.random.default_rng(seed + 1)
    every = max(1, epochs // 10)
    for epoch in range(1, epochs + 1):
        encoder.train()
        run(rng.permutation(train), True)
        if epoch % every and epoch != epochs:
            continue
        encoder.eval()
        curve[epoch], fit[epoch] = r2(test), r2(train)
        print(f"  token rate R2 {curve[epoch]:.3f} held out, {fit[epoch]:.3f} on the training "
              f"files after {epoch} epochs", flush=True)  # fmt: skip
    end = torch.cat([q.detach().flatten() for q in encoder.parameters()])
    moved = float((end - start).norm() / start.norm())
    print(f"  the encoder's weights moved by {moved:.1%} of their norm", flush=True)
    return {
        "train_files": len(train),
        "test_files": len(test),
        "r2_by_epoch": curve,
        "train_r2_by_epoch": fit,
        "encoder_moved": moved,
    }


def band_errors(jepa, target, cfg, modality, ds) -> np.ndarray:
    """Each record's JEPA prediction error with each band (row of patches) masked in turn, the
    rest as context: log mean squared error over the band's tokens [records, bands], against
    `target`'s features normalised as in training (`loss.target_norm`)."""
    opts, out = method_options(modality, cfg), []
    with torch.no_grad():
        for i in range(len(ds)):
            t = modality.tokenize(ds[i], ds.stats, opts)
            tokens, coords = np.asarray(t["tokens"], dtype=np.float32), np.asarray(t["coords"])
            rows = np.unique(coords[:, 0])
            samples = [
                Sample(i, tokens, coords, np.flatnonzero(coords[:, 0] != r),
                       [np.flatnonzero(coords[:, 0] == r)])
                for r in rows
            ]  # fmt: skip
            b = pack(samples, modality.position_columns)
            pred = jepa.forward_eager(b).float()
            err = ((pred - target_features(target, b, cfg.loss.target_norm)) ** 2).mean(-1)
            cu = b.cu_tgt.tolist()
            out.append([float(err[cu[k] : cu[k + 1]].mean().log()) for k in range(len(rows))])
    return np.asarray(out)


def record_probe(x: np.ndarray, y: np.ndarray, args, res: dict, key: str) -> str:
    """The record probe of label `y` from features `x` with each of `args.labels` labelled
    files (`args.folds` draws): into res[f"{key}_{n}"] as [mean, std]; the printed text."""
    parts = []
    for n in args.labels:
        r = linear_probe(x, y, args.folds, 0, train_groups=n)
        res[f"{key}_{n}"] = [r["mean"], r["std"]]
        parts.append(f"{key} {n} labels {r['mean']:.3f} +- {r['std']:.3f}")
    return "; ".join(parts)


def plain_class(ds: ShardDataset, raw: Path) -> np.ndarray | None:
    """Each record's `sound` from the cohort's labels.csv (None for a version-1 cohort, or
    one of a single sound)."""
    with open(raw / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "sound" not in rows[0]:
        return None
    by_file = {file_index(r["path"]): r["sound"] for r in rows}
    out = np.array([by_file[file_index(ds[i]["source"])] for i in range(len(ds))])
    return out if len(set(out)) > 1 else None  # `--sounds noise`: nothing to tell apart


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the ingested control")
    p.add_argument("--raw", required=True, help="the generated cohort (holds rates.npy)")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN:SEED")
    p.add_argument(
        "--labels", type=int, nargs="+", default=[8], help="labelled files per record-probe draw"
    )
    p.add_argument("--folds", type=int, default=10, help="record-probe draws")
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--patches", action="store_true", help="probe the pooled patches too")
    p.add_argument(
        "--rate-gate", type=int, default=0, metavar="EPOCHS",
        help="fine-tune each run's encoder(s) on the token rate for EPOCHS epochs",
    )  # fmt: skip
    p.add_argument(
        "--gate-files", type=int, default=0, metavar="N",
        help="labelled files for --rate-gate (default: the whole training half)",
    )  # fmt: skip
    p.add_argument("--gate-arms", nargs="+", choices=("pretrained", "random-init"),
                   default=["random-init"])  # fmt: skip
    p.add_argument(
        "--gate-alone", action="store_true",
        help="--rate-gate encodes every patch alone: what one patch shows of the rate",
    )  # fmt: skip
    p.add_argument(
        "--band-error", action="store_true",
        help="read sync from each run's prediction error with each band masked (needs the "
        "run's checkpoint: its predictor)",
    )  # fmt: skip
    p.add_argument(
        "--encoder", choices=("target", "context"), default="target",
        help="which of each run's encoders to probe (context: the online one, e.g. when the "
        "target was frozen with ema.start=1)",
    )  # fmt: skip
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.rate_gate and not args.run:
        p.error("--rate-gate needs a --run (whose encoders it trains)")
    ds = ShardDataset(args.data)
    rates = np.load(Path(args.raw) / "rates.npy")
    has_phases = (Path(args.raw) / "phases.npy").is_file()  # cohorts written since 2026-12-04
    phases = np.load(Path(args.raw) / "phases.npy") if has_phases else None
    y = read_column(ds, args.data, "label")
    sound = plain_class(ds, Path(args.raw))
    results: dict[str, dict] = {}
    if args.oracle:
        recs = (ds[i] for i in range(len(ds)))
        x = np.array([[sync_score(r["mel"], valid_frames=int(r["valid_frames"]))] for r in recs])
        for n in args.labels:
            r = linear_probe(x, y, args.folds, 0, train_groups=n)
            results[f"oracle/{n}"] = {"accuracy": r["mean"], "std": r["std"]}
            print(f"oracle sync_score, {n} labels: {r['mean']:.3f} +- {r['std']:.3f}", flush=True)
        if args.run:  # the token oracle needs the runs' patch size
            _, _, _, cfg0, mod0 = load_run_and_baseline(args.run[0], ds.stats)
            pt = int(method_options(mod0, cfg0).patch_time)
            t = token_probe(*oracle_tokens(ds, rates, cfg0, mod0, pt), None)
            results["oracle/token_rate"] = {"r2": t["mean"], "std": t["std"]}
            print(f"oracle rate_track: token rate R2 {t['mean']:.3f} +- {t['std']:.3f}", flush=True)
    for spec in args.run:
        try:
            run, encoder, random_init, cfg, modality = load_run_and_baseline(
                spec, ds.stats, args.encoder
            )
        except ValueError as e:
            p.error(str(e))
        patch_time = int(method_options(modality, cfg).patch_time)
        if args.patches and "patches" not in results:
            pooled, toks, targs, kept = patch_tokens(cfg, modality, ds, rates, patch_time)
            t = token_probe(toks, targs, None)
            res = {"token_rate_r2": t["mean"], "token_rate_r2_std": t["std"]}
            line = f"patches (no encoder): token rate R2 {t['mean']:.3f} +- {t['std']:.3f};"
            if phases is not None:
                line += " " + phase_probes(ds, rates, phases, patch_time, toks, kept, res) + ";"
            line += " " + record_probe(pooled, y, args, res, "sync")
            results["patches"] = res
            print(line, flush=True)
        for name, enc in (("pretrained", encoder), ("random-init", random_init)):
            toks, targs, pooled, kept = features(enc, cfg, modality, ds, rates, patch_time)
            t = token_probe(toks, targs, None)
            res = {"token_rate_r2": t["mean"], "token_rate_r2_std": t["std"]}
            line = f"{run} {name:>11}: token rate R2 {t['mean']:.3f} +- {t['std']:.3f}"
            if phases is not None:
                line += "; " + phase_probes(ds, rates, phases, patch_time, toks, kept, res)
            line += "; " + record_probe(pooled, y, args, res, "sync")
            if sound is not None:
                line += "; " + record_probe(pooled, sound, args, res, "sound")
            results[f"{run}/{name}"] = res
            print(line, flush=True)
        if args.band_error:
            jepa, _, _ = load_jepa(run)
            # the run's random init, drawn as the trainer drew it (the seed of RUN:SEED)
            torch.manual_seed(int(spec.rpartition(":")[2]))
            init = JEPA(build_embedder(modality, cfg, ds.stats), cfg.model).eval()
            ema = encoder if args.encoder == "target" else load_encoder(run, "target")[0]
            for name, model, target in (("pretrained", jepa, ema),
                                        ("random-init", init, init.encoder)):  # fmt: skip
                err = band_errors(model, target, cfg, modality, ds)
                res = {c: float(err[y == c].mean()) for c in np.unique(y)}
                line = f"{run} {name:>11}: band-masked log error " + ", ".join(
                    f"{c} {v:.3f}" for c, v in res.items()
                )
                line += "; from it " + record_probe(err, y, args, res, "sync")
                results[f"{run}/{name}/band_error"] = res
                print(line, flush=True)
        for arm in args.gate_arms if args.rate_gate else ():
            seed = int(spec.rpartition(":")[2])
            enc = encoder if arm == "pretrained" else random_init
            print(f"{run} {arm}: token rate fit, {args.gate_files or 'all'} files", flush=True)
            key = f"{run}/{arm}/rate_gate" + ("_alone" if args.gate_alone else "")
            results[key] = rate_gate(
                enc, cfg, modality, ds, rates, patch_time, args.rate_gate, seed,
                args.gate_files, args.gate_alone,
            )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
