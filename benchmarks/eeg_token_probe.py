"""What pretrained EEG token features carry about each token's beta rhythm, beside random init.

For every EEG token (one channel x one second) the beta rhythm's peak frequency and log power
are read off the raw window (the periodogram of the second, zero-padded to 0.25 Hz, on 13-31
Hz), beside the alpha (8-12 Hz) and broadband (1-45 Hz) log power, and a ridge regression
predicts each from the token's encoder features (R^2, 5 folds grouped by subject:
`engine.probe.token_probe`). Each run's target encoder is compared with the
same architecture at the random init of the run's seed (as `engine.probe --baseline --seed S`).

On the demo's `rhythm` control with `--coupling frequency` (docs/results.md) the peak frequency
is what the JEPA can predict from context (in the coupled half of the subjects) and the power
is constant, so a gain in frequency R^2 is the deep-linear claim on tokens: the features keep
content predictable from context.

    python benchmarks/eeg_token_probe.py --data DIR --run RUN:SEED [RUN:SEED ...] \
        [--records 200] [--json FILE] [--oracle LABEL]

`--oracle LABEL` first reads the record label with one number per window, the control's
oracle: the correlation of each channel's beta peak frequency in one second with the next
second's, every record, logistic regression over 5 folds grouped by subject.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on sys.path and its kernels.py would shadow the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from engine.export import load_run_and_baseline  # noqa: E402
from engine.model import Encoder  # noqa: E402
from engine.probe import encode_records, linear_probe, read_column, token_probe  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402

BAND_HZ = (13.0, 31.0)
PAD = 4  # periodogram zero-padding factor (0.25 Hz bins at 1-s tokens)
LATENTS = ("peak_hz", "log_power", "alpha_log_power", "broadband_log_power")


class _Subset:
    """Records `idx` of `ds`, as encode_records reads a dataset."""

    def __init__(self, ds: ShardDataset, idx: np.ndarray) -> None:
        self.ds, self.idx, self.stats = ds, idx, ds.stats

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict:
        return self.ds[int(self.idx[i])]


def beta_latents(record: dict) -> np.ndarray:
    """[C, S, 4]: each channel-second's beta peak frequency (Hz), log beta power, log alpha
    power (8-12 Hz) and log broadband power (1-45 Hz)."""
    sfreq = int(record["sfreq"])
    x = np.asarray(record["eeg"], dtype=np.float64)
    c, n = x.shape
    x = x[:, : n // sfreq * sfreq].reshape(c, -1, sfreq)
    spec = np.abs(np.fft.rfft(x - x.mean(-1, keepdims=True), PAD * sfreq, axis=-1)) ** 2
    f = np.fft.rfftfreq(PAD * sfreq, 1 / sfreq)

    def log_power(lo: float, hi: float) -> np.ndarray:
        return np.log(spec[..., (f >= lo) & (f <= hi)].sum(-1) + 1e-12)

    band = (f >= BAND_HZ[0]) & (f <= BAND_HZ[1])
    peak = f[band][spec[..., band].argmax(-1)]
    return np.stack([peak, log_power(*BAND_HZ), log_power(8, 12), log_power(1, 45)], -1)


def probe(encoder: Encoder, cfg, modality, sub: _Subset, latents, groups) -> dict:
    feats, ys = [], []
    for (coords, h), lat in zip(encode_records(encoder, cfg, modality, sub), latents, strict=True):
        ch, sec = coords[:, 0].astype(int), coords[:, 1].astype(int)
        feats.append(h.numpy())
        ys.append(lat[ch, sec])
    return {
        name: token_probe(feats, [y[:, k] for y in ys], groups) for k, name in enumerate(LATENTS)
    }


def oracle(ds: ShardDataset, data: str, label: str) -> dict:
    """The one-number record oracle (module docstring): its accuracy and per-class means."""
    corr = []
    for i in range(len(ds)):
        peak = beta_latents(ds[i])[..., 0]
        corr.append(np.corrcoef(peak[:, :-1].ravel(), peak[:, 1:].ravel())[0, 1])
    x = np.nan_to_num(np.asarray(corr))[:, None]
    y = read_column(ds, data, label)
    r = linear_probe(x, y, 5, 0, groups=read_column(ds, data, "subject"))
    means = {str(c): round(float(x[y == c].mean()), 3) for c in np.unique(y)}
    return {"accuracy": r["mean"], "std": r["std"], "class_means": means}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="an ingested EEG dataset")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN:SEED")
    p.add_argument("--records", type=int, default=200, help="evenly spaced records probed")
    p.add_argument("--json", type=Path, help="results file (default: print only)")
    p.add_argument("--oracle", metavar="LABEL", help="read LABEL with the one-number oracle")
    args = p.parse_args(argv)
    if not args.run and not args.oracle:
        p.error("nothing to do: give --run RUN:SEED and/or --oracle LABEL")
    ds = ShardDataset(args.data)
    if ds.modality != "eeg":
        print(f"eeg_token_probe: {args.data} is a {ds.modality} dataset, not eeg", file=sys.stderr)
        return 1
    results: dict[str, dict] = {}
    if args.oracle:
        results["oracle"] = oracle(ds, args.data, args.oracle)
        o = results["oracle"]
        print(f"oracle {args.oracle}: accuracy {o['accuracy']:.3f} +- {o['std']:.3f}, "
              f"neighbour correlation by class {o['class_means']}", flush=True)  # fmt: skip
    idx = np.unique(np.linspace(0, len(ds) - 1, min(args.records, len(ds))).round().astype(int))
    sub = _Subset(ds, idx)
    latents = [beta_latents(sub[i]) for i in range(len(sub))]
    groups = np.array([sub[i]["subject"] for i in range(len(sub))])
    for spec in args.run:
        try:
            run, encoder, random_init, cfg, modality = load_run_and_baseline(spec, ds.stats)
        except ValueError as e:
            p.error(str(e))
        for name, enc in (("pretrained", encoder), ("random-init", random_init)):
            r = probe(enc, cfg, modality, sub, latents, groups)
            results[f"{run}/{name}"] = r
            print(
                f"{run} {name:>11}: R2 "
                + ", ".join(f"{k} {r[k]['mean']:.3f} +- {r[k]['std']:.3f}" for k in LATENTS),
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
