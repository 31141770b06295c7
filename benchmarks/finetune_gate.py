"""Is a control solvable, and does pretraining help with few labels? Fine-tune on N labelled
subjects of one half of the subjects and test on the other half.

The supervised gate of a positive control (docs/results.md): the same encoder, trained on the
label from random init, must reach it on held-out subjects before a pretraining result on it
counts. `engine.finetune` cross-validates over all subjects and always runs both arms; this
script trains on `--train-subjects` of the first of two subject-grouped folds (balanced over
the classes) and tests on the whole second fold, for the arms asked for, with
`engine.finetune.finetune_fold` (AdamW, full fine-tuning, one of S-JEPA's heads, batch 16).
`--set` overrides the run's modality options (e.g. `modality.features=continuous`) for a
random-init arm of another architecture.

    python benchmarks/finetune_gate.py --checkpoint RUN --data DIR --label rhythm \
        [--train-subjects 32] [--epochs 15] [--eval-every 5] [--arms pretrained random-init] \
        [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder is first on sys.path and its kernels.py would shadow the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p).resolve() != REPO / "benchmarks"]

from engine.data import build_embedder  # noqa: E402
from engine.export import load_encoder  # noqa: E402
from engine.finetune import HEADS, TokenGrids, finetune_fold  # noqa: E402
from engine.model import Encoder  # noqa: E402
from engine.probe import probe_splits, read_column  # noqa: E402
from pipelines.shards import ShardDataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint or export")
    p.add_argument("--data", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--group-by", default="subject")
    p.add_argument("--train-subjects", type=int, help="default: every subject of the fold")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--eval-every", type=int, default=0, metavar="K",
        help="also print the held-out accuracy after every K-th epoch (a learning curve)",
    )  # fmt: skip
    p.add_argument("--head", choices=HEADS, default="contextual")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", choices=("pretrained", "random-init"),
                   default=["pretrained", "random-init"])  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="modality.KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-ratio", type=float, default=0.0, help="as engine.finetune's")
    p.add_argument("--mask-shape", choices=("strips", "tokens"), default="strips")
    args = p.parse_args(argv)
    encoder, cfg, modality = load_encoder(args.checkpoint, "target")
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep or not key.startswith("modality."):
            p.error(f"--set expects modality.KEY=VALUE, got {kv!r}")
        cfg.modality[key.split(".", 1)[1]] = yaml.safe_load(value)
    if args.set and "pretrained" in args.arms:
        p.error("--set changes the architecture: use it with --arms random-init only")
    ds = ShardDataset(args.data)
    labels = read_column(ds, args.data, args.label)
    groups = read_column(ds, args.data, args.group_by)
    classes = sorted({v for v in labels.tolist()}, key=str)
    if len(classes) < 2:
        p.error(f"{args.label!r} has fewer than two classes")
    y = torch.tensor([classes.index(v) for v in labels.tolist()])
    train, test = probe_splits(np.asarray(labels.tolist()), True, 2, args.seed, groups)[0]
    if args.train_subjects:
        rng = np.random.default_rng(args.seed)
        pick: set = set()
        for c in classes:
            subs = sorted({groups[i] for i in train if labels[i] == c})
            n = args.train_subjects // len(classes)
            if n > len(subs):
                p.error(f"class {c!r} has {len(subs)} subjects in the training half, not {n}")
            pick |= set(rng.choice(subs, n, replace=False).tolist())
        train = np.array([i for i in train if groups[i] in pick])
    grids = TokenGrids.of(modality, cfg, ds, np.arange(len(ds)))
    print(
        f"{args.checkpoint}: {len({groups[i] for i in train})} training subjects "
        f"({len(train)} records), {len({groups[i] for i in test})} held out ({len(test)})",
        flush=True,
    )
    torch.manual_seed(args.seed)
    random_init = Encoder(build_embedder(modality, cfg, ds.stats), cfg.model)
    loop = argparse.Namespace(  # engine.finetune's loop and its defaults
        seed=args.seed, head=args.head, filters=4, tune="full", lr=args.lr, weight_decay=0.01,
        epochs=args.epochs, batch_size=16, mask_ratio=args.mask_ratio, mask_shape=args.mask_shape,
    )  # fmt: skip
    for name in args.arms:
        enc = encoder if name == "pretrained" else random_init

        def report(epoch: int, score: float, name: str = name) -> None:
            print(f"  {name}: held-out accuracy {score:.3f} after {epoch} epochs", flush=True)

        acc = finetune_fold(
            enc, grids, y, train, test, loop, True, len(classes), report, args.eval_every
        )
        print(f"  {name}: held-out accuracy {acc:.3f} after {args.epochs} epochs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
