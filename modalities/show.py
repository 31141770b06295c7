"""`python -m modalities.show MODALITY --data DIR --out FILE.png [--index i] [--seed S]
[--config RUN]`.

Draws one sample of a dataset directory with the context and target masks its modality's masker
draws for it, so a person can see what the model is asked to predict: with the masks and patch
geometry of a run (`--config RUN_DIR` or a config YAML: its `modality:` section), or the
modality's defaults. The drawing is the modality's own `draw(ds, index, rng, opts) -> Drawing`
(`modalities.base.Modality.draw`), found through the one modality registry
(`modalities.get_modality`, built-ins and installed plugins alike); the fMRI, EEG and audio
drawers live here.

Imports numpy, yaml, pyarrow (`pipelines.shards`) and, inside the drawers, matplotlib (Agg
backend) and the modality's model pieces. Never imports `engine`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modalities import Modality, ModalityError, available, get_modality
from pipelines.shards import ShardDataset, ShardError


@dataclass
class Drawing:
    """A drawn sample: the matplotlib figure and a one-line description for the CLI."""

    figure: Any  # matplotlib.figure.Figure
    summary: str


def drawer(name: str) -> Callable[[ShardDataset, int, np.random.Generator, Any], Drawing]:
    """The drawing function of the modality registered as `name`."""
    return get_modality(name).draw


def options_from_config(modality: Modality, path: str | Path | None) -> Any:
    """The method options a run config file sets (its `modality:` section; a run directory
    means its config.yaml), or the modality's defaults for None. A run saved before modality
    options kept `model.patch_len` / `mask.*`: those are mapped as the engine maps them."""
    if path is None:
        return modality.method_options({})
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the config ({e})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping of config sections")
    legacy = {f"mask.{k}": v for k, v in (tree.get("mask") or {}).items()}
    if "patch_len" in (tree.get("model") or {}):
        legacy["model.patch_len"] = tree["model"]["patch_len"]
    try:
        return modality.method_options(tree.get("modality") or {}, legacy)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed (or wanted) on a server
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------
# fMRI: ROI x time with Brain-JEPA's observation block, Cross-ROI, Cross-Time, Double-Cross

# Painted in this order, so where targets overlap (a Double-Cross ROI that is also a Cross-ROI
# one, at an edge patch inside the Cross-ROI span) the later colour shows.
_FMRI_ROLES = (
    ("not used", "#d9d9d9"),
    ("context", "#4daf4a"),
    ("Cross-ROI target", "#e41a1c"),
    ("Cross-Time target", "#377eb8"),
    ("Double-Cross target", "#ff7f00"),
    ("missing ROI", "#000000"),
)


def draw_fmri(ds: ShardDataset, index: int, rng: np.random.Generator, opts: Any) -> Drawing:
    """Robust-scaled BOLD (ROI x frame) next to the Brain-JEPA mask of the same sample, drawn
    with the method options `opts` (`BrainJepaConfig`: patch length, mask). ROIs are grouped by
    role (context ROIs, then Cross-ROI ROIs, then the rest; ROI order within a group) so the
    blocks read as blocks: the masker picks ROIs at random, and in atlas order they would be
    stripes.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from modalities.fmri.jepa import SpatiotemporalMasker

    plt = _pyplot()
    patch_len = opts.patch_len
    record = ds[index]
    bold = np.asarray(record["bold"], dtype=np.float32)
    n_rois, n_frames = bold.shape
    t = get_modality("fmri").tokenize(record, ds.stats, opts)  # as training tokenizes it
    coords = t["coords"]
    mask = SpatiotemporalMasker(opts).draw(rng, coords)

    n_patches = n_frames // patch_len
    role = np.full((n_rois, n_patches), 0, dtype=np.int64)
    present = np.zeros(n_rois, dtype=bool)
    present[coords[:, 0]] = True
    role[~present] = len(_FMRI_ROLES) - 1
    scaled = np.full((n_rois, n_frames), np.nan, dtype=np.float32)
    scaled[coords[:, 0], :] = 0  # rows of present ROIs, filled below
    for r, p, tok in zip(coords[:, 0], coords[:, 1], t["tokens"], strict=True):
        scaled[r, p * patch_len : (p + 1) * patch_len] = tok
    parts = (mask.context, mask.cross_roi, mask.cross_time, mask.double_cross)
    for value, idx in enumerate(parts, start=1):
        role[coords[idx, 0], coords[idx, 1]] = value

    ctx_rois = np.unique(coords[mask.context, 0])
    alpha_rois = np.setdiff1d(np.unique(coords[mask.cross_roi, 0]), ctx_rois)
    rest = np.setdiff1d(np.arange(n_rois), np.concatenate([ctx_rois, alpha_rois]))
    order = np.concatenate([ctx_rois, alpha_rois, rest])

    fig, (ax_sig, ax_mask) = plt.subplots(
        1, 2, figsize=(12, 7), sharey=True, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    extent = (0, n_frames, n_rois, 0)
    im = ax_sig.imshow(
        scaled[order], aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, extent=extent,
        interpolation="nearest",
    )  # fmt: skip
    fig.colorbar(im, ax=ax_sig, fraction=0.046, pad=0.02, label="(x - median) / IQR")
    ax_sig.set_title("BOLD, robust-scaled per ROI")
    ax_sig.set_ylabel("ROI (grouped: context ROIs, Cross-ROI ROIs, others)")
    cmap = ListedColormap([c for _, c in _FMRI_ROLES])
    ax_mask.imshow(
        role[order], aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(_FMRI_ROLES) - 0.5,
        extent=extent, interpolation="nearest",
    )  # fmt: skip
    t0, t1 = mask.obs_span
    for ax in (ax_sig, ax_mask):
        ax.set_xlabel(f"frame ({patch_len} frames = 1 time patch)")
        ax.set_xticks(np.arange(0, n_frames + 1, patch_len))
        for x in (t0 * patch_len, t1 * patch_len):
            ax.axvline(x, color="k", ls="--", lw=1)
    ax_mask.axhline(len(ctx_rois), color="k", lw=0.8)
    ax_mask.axhline(len(ctx_rois) + len(alpha_rois), color="k", lw=0.8)
    ax_mask.set_title("Brain-JEPA mask (dashed: observation span)")
    # Token counts of each role as drawn by the masker (a painted-over overlap still counts).
    counts = [int((role == 0).sum()), *(len(idx) for idx in parts), int((role == 5).sum())]
    handles = [
        Patch(color=c, label=f"{name} ({n} tokens)")
        for (name, c), n in zip(_FMRI_ROLES, counts, strict=True)
        if n or name != "missing ROI"
    ]
    ax_mask.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2,
        title="where targets overlap, the later one is drawn", title_fontsize="small",
    )  # fmt: skip
    who = " ".join(f"{k} {record[k]}" for k in ("subject", "group") if record.get(k) is not None)
    fig.suptitle(
        f"{ds.root.name} record {index} ({who or record.get('id', '')}): {n_rois} ROIs x "
        f"{n_patches} patches, observed {len(mask.obs_rois)} ROIs x patches {t0}-{t1 - 1}, "
        f"edges early {mask.early} / late {mask.late}"
    )
    fig.tight_layout()
    summary = (
        f"context {len(mask.context)}, Cross-ROI {len(mask.cross_roi)}, Cross-Time "
        f"{len(mask.cross_time)}, Double-Cross {len(mask.double_cross)} of {len(coords)} tokens"
    )
    return Drawing(fig, summary)


# --------------------------------------------------------------------------------------------
# EEG: channels x time with S-JEPA's spatial target blocks, and the electrode layout


def draw_eeg(ds: ShardDataset, index: int, rng: np.random.Generator, opts: Any) -> Drawing:
    """Traces of every channel with the target blocks shaded, beside a top view of the
    electrodes (context, each block's channels, its centre electrode). Masks as the method
    options `opts` (`SJepaMethod`: `modality.masks`) draw them."""
    from modalities.eeg.sjepa import CHANNEL, SECOND

    eeg_modality = get_modality("eeg")
    plt = _pyplot()
    record = ds[index]
    stats = ds.stats
    tokens = eeg_modality.tokenize(record, stats, opts)  # as training tokenizes it
    coords = tokens["coords"]
    masker = eeg_modality.masker(opts)
    context, targets, blocks = masker.draw(rng, coords)
    eeg = np.asarray(record["eeg"], dtype=np.float32)
    names = list(record["channels"])
    present = np.asarray(record["channel_mask"]).astype(bool)
    sfreq = float(record["sfreq"])
    n_ch, n_samples = eeg.shape
    t = np.arange(n_samples) / sfreq
    colours = ["#e41a1c", "#377eb8", "#ff7f00", "#984ea3"]

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [2.2, 1]})
    spread = np.nanpercentile(np.abs(eeg[present]), 99) if present.any() else 1.0
    spread = float(spread) if spread > 0 else 1.0
    for c in range(n_ch):
        y = n_ch - 1 - c
        ax.plot(t, y + 0.45 * eeg[c] / spread, lw=0.5, color="k" if present[c] else "#bbbbbb")
    for k, tgt in enumerate(targets):
        col = colours[k % len(colours)]
        for ch, sec in {(int(a), int(b)) for a, b in coords[tgt][:, [CHANNEL, SECOND]]}:
            y = n_ch - 1 - ch
            ax.add_patch(plt.Rectangle((sec, y - 0.5), 1.0, 1.0, color=col, alpha=0.25, lw=0))
    ax.set_yticks(range(n_ch), names[::-1], fontsize=7)
    ax.set_xlim(0, t[-1] if len(t) else 1)
    ax.set_ylim(-1, n_ch)
    ax.set_xlabel("seconds (1 token = 1 channel x 1 s)")
    ax.set_title("EEG (uV, scaled), target blocks shaded; grey = channel absent")

    pos = np.asarray(record["positions"], dtype=np.float64)
    has = np.isfinite(pos).all(axis=1)
    ctx_ch = {int(c) for c in coords[context][:, CHANNEL]}
    ax2.scatter(pos[has, 0], pos[has, 1], s=260, c="#d9d9d9", edgecolors="k", lw=0.5)
    ctx = [c for c in range(n_ch) if has[c] and c in ctx_ch]
    ax2.scatter(
        pos[ctx, 0], pos[ctx, 1], s=260, c="#4daf4a", edgecolors="k", lw=0.5, label="context"
    )
    for k, (tgt, block) in enumerate(zip(targets, blocks, strict=True)):
        chans = sorted({int(c) for c in coords[tgt][:, CHANNEL]})
        col = colours[k % len(colours)]
        ax2.scatter(
            pos[chans, 0],
            pos[chans, 1],
            s=260,
            c=col,
            edgecolors="k",
            lw=0.5,
            label=f"target block {k + 1} ({len(tgt)} tokens)",
        )
        ax2.scatter(*pos[block.centre, :2], s=90, marker="*", c="w", edgecolors="k", lw=0.6)
    for c in range(n_ch):
        if has[c]:
            ax2.annotate(names[c], pos[c, :2], ha="center", va="center", fontsize=6)
    ax2.set_aspect("equal")
    ax2.axis("off")
    ax2.set_title("electrodes from above (star: block centre)")
    handles, labels = ax2.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=len(labels), markerscale=0.6)
    who = " ".join(f"{k} {record[k]}" for k in ("subject", "label") if record.get(k) is not None)
    fig.suptitle(
        f"{ds.root.name} record {index} ({who}): {int(present.sum())} of {n_ch} "
        f"channels, {n_samples / sfreq:g} s at {sfreq:g} Hz"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below
    summary = (
        f"context {len(context)}, targets "
        + ", ".join(str(len(t)) for t in targets)
        + f" of {len(coords)} tokens"
    )
    return Drawing(fig, summary)


# --------------------------------------------------------------------------------------------
# Audio: the log-mel with A-JEPA's two kinds of mask (the curriculum moves from one to the other)


def draw_audio(ds: ShardDataset, index: int, rng: np.random.Generator, opts: Any) -> Drawing:
    """The record's log-mel drawn twice, under a random-block mask and under a time-frequency
    mask (time strips, frequency bands), each patch tinted as context (green), a target (one
    colour per target) or unused (grey veil); the titles give the curriculum's probability of
    each kind at the start and end of the ramp. Masks as the method options `opts`
    (`AJepaMethod`) draw them."""
    from modalities.audio.ajepa import CurriculumMasker, tf_probability

    audio = get_modality("audio")
    plt = _pyplot()
    record = ds[index]
    tokens = audio.tokenize(record, ds.stats, opts)  # as training tokenizes it
    coords = tokens["coords"]
    masker = CurriculumMasker(opts)
    mel = np.asarray(record["mel"], dtype=np.float32)
    n_mels, frames = mel.shape
    valid = int(record["valid_frames"])
    pf, pt = opts.patch_freq, opts.patch_time
    a, b = opts.curriculum_steps
    p0, p1 = tf_probability(opts, a), tf_probability(opts, b)
    kinds = [
        ("random blocks", masker.block(rng, coords), 1 - p0, 1 - p1),
        ("time-frequency", masker.tf_mask(rng, coords), p0, p1),
    ]
    colours = ["#e41a1c", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf"]
    seconds = frames * 0.010
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    lines = []
    for ax, (kind, (context, targets), start, end) in zip(axes, kinds, strict=True):
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, seconds, 0, n_mels))  # fmt: skip
        role = np.full(len(coords), -2)  # -2 unused, -1 context, k target k
        role[context] = -1
        for k, tgt in enumerate(targets):
            role[tgt] = k
        for (row, col), r in zip(coords, role, strict=True):
            x, y = col * pt * 0.010, row * pf
            if r == -2:
                face, alpha = "#ffffff", 0.55
            elif r == -1:
                face, alpha = "#4daf4a", 0.18
            else:
                face, alpha = colours[r % len(colours)], 0.45
            ax.add_patch(plt.Rectangle((x, y), pt * 0.010, pf, color=face, alpha=alpha, lw=0))
        if valid < frames:
            ax.axvline(valid * 0.010, color="w", ls="--", lw=1)
        ax.set_ylabel("mel bin")
        ax.set_title(
            f"{kind}: context {len(context)}, targets "
            + ", ".join(str(len(t)) for t in targets)
            + f" of {len(coords)} patches; drawn with p {start:.2f} at step {a}, "
            f"{end:.2f} at step {b}",
            fontsize=9,
        )
        lines.append(f"{kind} ctx {len(context)} tgt {sum(len(t) for t in targets)}")
    axes[-1].set_xlabel(f"seconds ({pf} x {pt} patches; dashed: end of real frames)")
    who = " ".join(f"{k} {record[k]}" for k in ("subject", "label") if record.get(k) is not None)
    fig.suptitle(
        f"{ds.root.name} record {index} ({who}): {n_mels} mel bins x {frames} frames, "
        f"green context, colours targets, veiled unused"
    )
    fig.tight_layout()
    return Drawing(fig, "; ".join(lines) + f" of {len(coords)} tokens")


def draw_points(ds: ShardDataset, index: int, rng: np.random.Generator, opts: Any) -> Drawing:
    """The record's points in 3D twice, under Point-JEPA's sequence blocks and under 3D-JEPA's
    spatial blocks: each patch's points coloured as context (green), a target (one colour per
    target) or unused (grey), the patch centres joined in sequencer order (the walk Point-JEPA's
    blocks are runs of). Tokens as the method options `opts` (`PointJepaMethod`) cut them."""
    import dataclasses

    from modalities.points.pointjepa import PointMasker

    points = get_modality("points")
    plt = _pyplot()
    record = ds[index]
    tokens = points.tokenize(record, ds.stats, opts)  # as training tokenizes it
    coords = tokens["coords"]
    k = opts.neighbours
    patches = tokens["tokens"][:, : 3 * k].reshape(len(coords), k, 3)
    centres = tokens["tokens"][:, -3:]
    colours = ["#e41a1c", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf"]
    fig = plt.figure(figsize=(13, 6.5))
    lines = []
    for i, masking in enumerate(("sequence", "multiblock")):
        masker = PointMasker(dataclasses.replace(opts, masking=masking))
        context, targets = masker(rng, coords)
        role = np.full(len(coords), -2)  # -2 unused, -1 context, k target k
        role[context] = -1
        for t, tgt in enumerate(targets):
            role[tgt] = t  # a token in two targets shows the later one
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        for r, face, size in (
            [(-2, "#bbbbbb", 2)]
            + [(-1, "#4daf4a", 4)]
            + [(t, colours[t % len(colours)], 6) for t in range(len(targets))]
        ):
            sel = np.flatnonzero(role == r)
            if len(sel):
                xyz = (patches[sel] + centres[sel, None]).reshape(-1, 3)
                ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=size, c=face, depthshade=False,
                           alpha=0.35 if r == -2 else 0.8, lw=0)  # fmt: skip
        path = centres[np.argsort(coords[:, 3])]
        ax.plot(path[:, 0], path[:, 1], path[:, 2], color="k", lw=0.8)
        ax.scatter(*path[0], color="k", s=30, marker="*")
        ax.set_box_aspect((1, 1, 1))
        name = "Point-JEPA sequence blocks" if masking == "sequence" else "3D-JEPA spatial blocks"
        ax.set_title(
            f"{name}: context {len(context)}, targets "
            + ", ".join(str(len(t)) for t in targets)
            + f" of {len(coords)} patches",
            fontsize=9,
        )
        lines.append(f"{masking} ctx {len(context)} tgt {sum(len(t) for t in targets)}")
    who = " ".join(f"{k} {record[k]}" for k in ("label", "kind") if record.get(k) is not None)
    fig.suptitle(
        f"{ds.root.name} record {index} ({who}): {opts.points} points, {len(coords)} patches of "
        f"{k}; green context, colours targets, grey unused, black the sequencer's walk "
        f"(star: its start)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return Drawing(fig, "; ".join(lines) + f" of {len(coords)} tokens")


# --------------------------------------------------------------------------------------------
# CLI


def save_png(fig: Any, out: Path) -> None:
    """Write the figure as PNG atomically (temp file + rename), so a reader never sees half."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.show",
        description="Draw one sample of a dataset with the context and target masks of its "
        "modality's masker.",
    )
    p.add_argument("modality", choices=available(), help="the dataset's modality")
    p.add_argument("--data", required=True, help="dataset directory (index.json + shards/)")
    p.add_argument("--index", type=int, default=0, help="record index (default 0)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default 0)")
    p.add_argument(
        "--config",
        default=None,
        help="a run directory or config YAML whose `modality:` section sets the masks and "
        "patch geometry (default: the modality's defaults)",
    )
    args = p.parse_args(argv)
    try:
        ds = ShardDataset(args.data)
        if ds.modality != args.modality:
            raise ValueError(f"{args.data} holds {ds.modality!r} records, not {args.modality!r}")
        if not 0 <= args.index < len(ds):
            raise ValueError(f"--index {args.index} is outside the {len(ds)} records")
        rng = np.random.default_rng([args.seed, args.index])
        opts = options_from_config(get_modality(args.modality), args.config)
        drawing = drawer(args.modality)(ds, args.index, rng, opts)
        out = Path(args.out)
        save_png(drawing.figure, out)
    except (ValueError, KeyError, ModalityError, ShardError, OSError) as e:
        print(f"modalities.show: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {args.modality} record {args.index}, seed {args.seed}: {drawing.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
