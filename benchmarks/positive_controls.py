"""The fMRI positive control end to end: does pretraining learn what random init does not have?

    python benchmarks/positive_controls.py --out DIR [--subjects 200] [--seeds 0 1 2]
        [--steps 1500] [--labels 16] [--draws 10]

1. Writes the control cohort (`python -m modalities.fmri.control`: NIfTI scans, atlas, labels,
   latent sidecars) and ingests it with `python -m pipelines.ingest fmri`.
2. Trains with `python -m engine.train --config engine/configs/fmri_control.yaml`: JEPA at every
   seed; MAE (`loss.objective=mae`) at every seed; and the two ablations at the first seed, each
   reverting one fix (`loss.target_norm=layer_norm`: I-JEPA's targets; `model.init=ijepa`) or
   taking the papers' EMA (`ema.start=0.996`) or a deeper predictor (`model.pred_depth=4`).
   Also the independent minimal JEPA (benchmarks/minimal_jepa.py) with both target norms, and
   the same encoder trained supervised on the label (160 subjects; 40 held out), and again on
   only `--labels` subjects (the few-label probe's budget: label efficiency).
3. Probes every encoder with `engine.probe`'s functions: the record label (`field`) with a linear
   probe on mean+std-pooled features trained on `--labels` labelled subjects (`--draws` draws,
   every other subject tested) and with 5-fold CV; the attentive probe on the same draws; the
   token latent (each token's frequency) with a ridge probe over token features, 5 folds grouped
   by subject. Beside them: the raw tokens, the random-init encoder of every seed, and the oracle
   features (one number per record: the correlation of neighbouring tokens' periodogram peaks;
   one per token: its own periodogram peak).
4. Writes DIR/results.json and prints a markdown table (docs/results.md holds one).

Every stage is skipped when its output exists, so a killed run resumes. Imports the project.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import minimal_jepa  # noqa: E402

from engine.config import load_config  # noqa: E402
from engine.data import build_embedder, method_options  # noqa: E402
from engine.export import load_encoder  # noqa: E402
from engine.model import Encoder  # noqa: E402
from engine.probe import (  # noqa: E402
    attentive_probe,
    linear_probe,
    token_features,
    token_probe,
)
from modalities import get_modality  # noqa: E402
from modalities.fmri.control import token_latents, token_oracle  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402

# One change each from engine/configs/fmri_control.yaml, at the first seed: the two fixes
# reverted, then the EMA and predictor settings of the papers' configs.
ABLATIONS = {
    "layernorm": "loss.target_norm=layer_norm",
    "ijepa-init": "model.init=ijepa",
    "ema0.996": "ema.start=0.996",
    "pred-depth4": "model.pred_depth=4",
}
CONFIG = REPO / "engine" / "configs" / "fmri_control.yaml"
LABEL = "field"


def sh(args: list[str], log: Path) -> None:
    """Run `python -m ...` from the repository, output to `log`; raise on failure."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    print(f"  {' '.join(args[:2])} ... done in {time.time() - t0:.0f} s", flush=True)


def prepare(out: Path, subjects: int) -> Path:
    raw, data = out / "raw", out / "data"
    if not (raw / "control.json").is_file():
        sh(
            ["-m", "modalities.fmri.control", str(raw), "--subjects", str(subjects)],
            out / "gen.log",
        )
    if not (data / "index.json").is_file():
        sh(
            [
                "-m", "pipelines.ingest", "fmri", "--input", str(raw / "bids"),
                "--atlas", str(raw / "atlas.nii.gz"), "--window", "128",
                "--participants-column", LABEL, "--output", str(data),
            ],
            out / "ingest.log",
        )  # fmt: skip
    return data


def train(out: Path, data: Path, name: str, steps: int, seed: int, *overrides: str) -> Path:
    run = out / "runs" / name
    if not (run / "summary.json").is_file():
        run.parent.mkdir(parents=True, exist_ok=True)
        sh(
            [
                "-m", "engine.train", "--data", str(data), "--out", str(run), "--config",
                str(CONFIG), "--steps", str(steps), f"train.seed={seed}", *overrides,
                "--resume", "auto",
            ],
            out / f"train-{name}.log",
        )  # fmt: skip
    return run


def supervised(data: Path, seed: int, steps: int, train_subjects: int = 160) -> dict:
    """The same encoder (the control config's architecture, random init of `seed`) trained on
    the label with a linear head on mean+std-pooled tokens; accuracy on held-out subjects."""
    cfg = load_config(CONFIG, [f"train.seed={seed}"])
    ds = ShardDataset(data)
    modality = get_modality(ds.modality)
    subjects = np.array([ds[i]["subject"] for i in range(len(ds))])
    labels = np.array([ds[i][LABEL] for i in range(len(ds))])
    classes = sorted(set(labels))
    y = torch.as_tensor([classes.index(v) for v in labels])
    opts = method_options(modality, cfg)
    toks = [modality.tokenize(ds[i], ds.stats, opts)["tokens"] for i in range(len(ds))]
    tokens = torch.stack([torch.as_tensor(t) for t in toks])
    coords = torch.as_tensor(modality.tokenize(ds[0], ds.stats, opts)["coords"])
    rng = np.random.default_rng([seed, 0x535550])
    uniq = rng.permutation(np.unique(subjects))
    train_idx = np.flatnonzero(np.isin(subjects, uniq[:train_subjects]))
    test_idx = np.flatnonzero(~np.isin(subjects, uniq[:train_subjects]))
    torch.manual_seed(seed)
    enc = Encoder(build_embedder(modality, cfg, ds.stats), cfg.model)
    head = torch.nn.Linear(2 * cfg.model.embed_dim, len(classes))
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=0.05)
    n = tokens.shape[1]
    cu = lambda b: torch.arange(b + 1, dtype=torch.int32) * n  # noqa: E731

    def logits(idx: np.ndarray) -> torch.Tensor:
        packing = {"max_tokens": n, "cu_all": cu(len(idx)), "valid_idx": None}
        h = enc.forward_all(tokens[idx], coords[None].expand(len(idx), -1, -1), None, packing)
        return head(torch.cat([h.mean(1), h.std(1)], 1))

    for _ in range(steps):
        idx = rng.choice(train_idx, cfg.data.batch_size)
        loss = torch.nn.functional.cross_entropy(logits(idx), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat(
            [logits(test_idx[i : i + 64]).argmax(1) for i in range(0, len(test_idx), 64)]
        )
        acc = float((pred == y[test_idx]).float().mean())
    return {
        "held_out_accuracy": acc,
        "train_subjects": train_subjects,
        "test_records": len(test_idx),
    }


def record_oracle(
    tokens: list[np.ndarray], coords: np.ndarray, centroids: np.ndarray
) -> np.ndarray:
    """One feature per record: the correlation between the periodogram peaks of neighbouring
    tokens (the 4 nearest parcels at the same time patch, and the same parcel one patch on)."""
    rois, patches = int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
    d = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)
    near = np.argsort(d, axis=1)[:, 1:5]
    out = []
    for t in tokens:
        f = token_oracle(t).reshape(rois, patches)
        a = np.concatenate([np.repeat(f, 4, axis=0).reshape(-1), f[:, :-1].reshape(-1)])
        b = np.concatenate([f[near.reshape(-1)].reshape(-1), f[:, 1:].reshape(-1)])
        out.append(np.corrcoef(a, b)[0, 1])
    return np.asarray(out)[:, None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--labels", type=int, default=16, help="labelled subjects per probe draw")
    p.add_argument("--draws", type=int, default=10)
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(out, args.subjects)
    s0 = args.seeds[0]
    runs: dict[str, tuple[Path, int]] = {}
    for s in args.seeds:
        runs[f"jepa-s{s}"] = (train(out, data, f"jepa-s{s}", args.steps, s), s)
    for name, override in ABLATIONS.items():
        runs[f"jepa-{name}-s{s0}"] = (
            train(out, data, f"jepa-{name}-s{s0}", args.steps, s0, override),
            s0,
        )
    for s in args.seeds:
        runs[f"mae-s{s}"] = (train(out, data, f"mae-s{s}", args.steps, s, "loss.objective=mae"), s)

    ds = ShardDataset(data)
    modality = get_modality(ds.modality)
    cfg = load_config(CONFIG)
    labels = np.array([ds[i][LABEL] for i in range(len(ds))])
    subjects = np.array([ds[i]["subject"] for i in range(len(ds))])
    latents = [token_latents(ds[i]) for i in range(len(ds))]
    opts = method_options(modality, cfg)
    raw = [modality.tokenize(ds[i], ds.stats, opts)["tokens"] for i in range(len(ds))]
    coords = modality.tokenize(ds[0], ds.stats, opts)["coords"]
    params = json.loads((out / "raw" / "control.json").read_text())
    from modalities.fmri.control import FrequencyControl, parcellate_ellipsoid

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    keep = {f: fields[f] for f in FrequencyControl.__dataclass_fields__}
    _, centroids = parcellate_ellipsoid(FrequencyControl(**keep), params["seed"])

    results_path = out / "results.json"
    results: dict[str, dict] = (
        json.loads(results_path.read_text()) if results_path.is_file() else {}
    )

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    def record_probes(pooled: np.ndarray) -> dict:
        few = linear_probe(pooled, labels, args.draws, 0, groups=subjects, train_groups=args.labels)
        return {"few_labels": few, "cv": linear_probe(pooled, labels, 5, 0, groups=subjects)}

    def report(name: str) -> None:
        r = results[name]
        print(
            f"{name:>26}: few-labels {r['few_labels']['mean']:.3f} +- {r['few_labels']['std']:.3f}"
            f"  cv {r['cv']['mean']:.3f}  token R2 {r['token_r2']['mean']:.3f}"
            + (
                f"  attentive {r['attentive_few_labels']['mean']:.3f}"
                if "attentive_few_labels" in r
                else ""
            ),  # fmt: skip
            flush=True,
        )

    def probe_all(name: str, toks, attentive: bool = False) -> None:
        """Probe `toks` (token features per record, or a callable making them) as `name`;
        a name already in results.json is only reported."""
        if name in results:
            return report(name)
        toks = toks() if callable(toks) else toks
        pooled = np.stack([np.concatenate([t.mean(0), t.std(0)]) for t in toks])
        r = {**record_probes(pooled), "token_r2": token_probe(toks, latents, subjects)}
        if attentive:
            r["attentive_few_labels"] = attentive_probe(
                toks, labels, args.draws, 0, groups=subjects, train_groups=args.labels
            )
        results[name] = r
        save()
        report(name)

    print("probes:", flush=True)
    if "oracle" not in results:
        oracle_rec = record_oracle(raw, coords, centroids)
        results["oracle"] = {
            **record_probes(oracle_rec),
            "token_r2": token_probe([token_oracle(t)[:, None] for t in raw], latents, subjects),
        }
        save()
    print(f"{'oracle':>26}: few-labels {results['oracle']['few_labels']['mean']:.3f}  token R2 "
          f"{results['oracle']['token_r2']['mean']:.3f}")  # fmt: skip
    probe_all("raw tokens", raw)
    for s in args.seeds:
        torch.manual_seed(s)
        rnd = Encoder(build_embedder(modality, cfg, ds.stats), cfg.model).eval()
        probe_all(
            f"random-init-s{s}", lambda e=rnd: token_features(e, cfg, modality, ds), attentive=True
        )
    for name, (run, _) in runs.items():
        for which in ("target", "context") if name.startswith("jepa-s") else ("target",):

            def feats(run: Path = run, which: str = which) -> list[np.ndarray]:
                enc, rcfg, _ = load_encoder(run, which)
                return token_features(enc, rcfg, modality, ds)

            probe_all(
                f"{name}/{which}", feats, attentive=name.startswith("jepa-s") and which == "target"
            )
    tokens_arr = np.stack(raw)
    for s in args.seeds:
        for targets in ("position_centered", "layer_norm") if s == s0 else ("position_centered",):
            name = f"minimal-{targets}-s{s}"
            path = out / "runs" / f"{name}.safetensors"
            if not path.is_file():
                enc = minimal_jepa.train(tokens_arr, coords, targets, args.steps, s, log_every=0)
                minimal_jepa.save(enc, path, int(coords[:, 0].max()) + 1)
            probe_all(
                name, lambda p=path: minimal_jepa.features(minimal_jepa.load(p), tokens_arr, coords)
            )
    rows = int(coords[:, 0].max()) + 1
    for s in args.seeds:  # the minimal JEPA's own starting weights (train() seeds, then builds)

        def minimal_init(s: int = s) -> list[np.ndarray]:
            torch.manual_seed(s)
            enc = minimal_jepa.Encoder(tokens_arr.shape[-1], rows).eval()
            return minimal_jepa.features(enc, tokens_arr, coords)

        probe_all(f"minimal-random-init-s{s}", minimal_init)
    results.setdefault("supervised", {})
    for s in args.seeds:
        if f"s{s}" not in results["supervised"]:
            results["supervised"][f"s{s}"] = supervised(data, s, args.steps)
            save()
        acc = results["supervised"][f"s{s}"]["held_out_accuracy"]
        print(f"{'supervised-s' + str(s):>26}: held-out accuracy {acc:.3f}")
    # Label efficiency: the same encoder trained supervised on as many labelled subjects as the
    # few-label probe gets, against pretraining on all records plus that probe.
    results.setdefault("supervised_few_labels", {})
    for s in args.seeds:
        if f"s{s}" not in results["supervised_few_labels"]:
            results["supervised_few_labels"][f"s{s}"] = supervised(
                data, s, args.steps, train_subjects=args.labels
            )
            save()
        acc = results["supervised_few_labels"][f"s{s}"]["held_out_accuracy"]
        print(f"{'supervised-few-s' + str(s):>26}: held-out accuracy {acc:.3f}")
    print(f"results written to {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
