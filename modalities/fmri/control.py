"""A positive control for fMRI pretraining: a BIDS-like cohort whose label no single token shows.

Every ROI carries, in each 16-frame patch (one Brain-JEPA token), an oscillation whose frequency
is the token's latent. The phase of every token is drawn afresh (unpredictable from anything
else), and white noise is added. What differs between the two classes of subjects
(`participants.tsv` column `field`) is only how the latent frequencies relate across tokens:

- `smooth`: the frequencies form a smooth random field over the brain (parcel centroids) and over
  time, so a token's frequency is predictable from its neighbours;
- `independent`: every token draws its frequency on its own.

In both classes each token's frequency is uniform on the same band and its phase uniform, so
every token has the same distribution whatever the class: no per-token statistic, and no pooling
of per-token features, can read the label. It lives in cross-token structure that is predictable
from context, which is what a JEPA is trained to capture. The frequency of a token is invisible
to any linear function of its samples (the random phase averages every linear readout to zero),
so the token-level latent also needs learned, phase-invariant features.

Files: `OUT/bids/` (one 4D int16 NIfTI per subject with its TR, `participants.tsv`, and a
`*_desc-latent_timeseries.tsv` sidecar per scan: the latent frequency of every ROI at every frame,
in cycles per patch), `OUT/atlas.nii.gz` (the parcellation the scans were made with; pass it as
`--atlas`), `OUT/control.json` (the parameters). Ingest with
`python -m pipelines.ingest fmri --input OUT/bids --atlas OUT/atlas.nii.gz --window 128
--participants-column field`.

`python -m modalities.fmri.control OUT [--subjects N] [--seed S]` writes one.
Imports numpy and scipy; nibabel inside the writer. Never imports `engine` or `pipelines`
(the shard format module's atomic writer excepted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modalities.bids import write_participants
from modalities.latent_field import uniform_field
from pipelines.shards import atomic_write_text

PATCH = 16  # frames per Brain-JEPA token
LATENT_SUFFIX = "_desc-latent_timeseries.tsv"


@dataclass(frozen=True)
class FrequencyControl:
    """Parameters of the control cohort (defaults: the one in docs/results.md).

    n_rois parcels tile an ellipsoidal brain of `shape` voxels (`voxel_mm`); each scan has
    `n_frames` frames at `tr` seconds. Token frequencies lie in [f_min, f_max] cycles per
    16-frame patch (0.05-0.14 Hz at TR 2 s). The smooth class correlates them over
    `space_mm` (Gaussian kernel on parcel centroids) and `time_patches` patches. `noise` is
    the white noise's standard deviation against the oscillation's amplitude of 1.
    """

    n_rois: int = 32
    shape: tuple[int, int, int] = (18, 22, 18)
    voxel_mm: float = 4.0
    n_frames: int = 384
    tr: float = 2.0
    f_min: float = 1.5
    f_max: float = 4.5
    space_mm: float = 25.0
    time_patches: float = 2.0
    noise: float = 0.5

    def __post_init__(self) -> None:
        if self.n_frames % PATCH:
            raise ValueError(f"n_frames must be a multiple of {PATCH}, got {self.n_frames}")
        if not 0 < self.f_min < self.f_max < PATCH / 2:
            raise ValueError(f"need 0 < f_min < f_max < {PATCH // 2} cycles per patch")


def parcellate_ellipsoid(cfg: FrequencyControl, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [X, Y, Z] int16 with 0 outside the brain and 1..n_rois inside, centroids [n, 3]
    in mm): a Voronoi tiling of an ellipsoid by `n_rois` seeds spread by farthest-point
    sampling, so parcels have similar sizes."""
    rng = np.random.default_rng([seed, 0x41544C])
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in cfg.shape), indexing="ij"), -1)
    centre = (np.array(cfg.shape) - 1) / 2
    inside = (((grid - centre) / (np.array(cfg.shape) / 2 - 0.5)) ** 2).sum(-1) <= 1
    pts = grid[inside].astype(np.float64)
    seeds = [pts[rng.integers(len(pts))]]
    dist = np.linalg.norm(pts - seeds[0], axis=1)
    for _ in range(cfg.n_rois - 1):
        seeds.append(pts[int(dist.argmax())])
        dist = np.minimum(dist, np.linalg.norm(pts - seeds[-1], axis=1))
    seeds_arr = np.stack(seeds)
    owner = np.linalg.norm(pts[:, None, :] - seeds_arr[None], axis=2).argmin(1)
    labels = np.zeros(cfg.shape, dtype=np.int16)
    labels[inside] = owner + 1
    centroids = np.stack([pts[owner == k].mean(0) for k in range(cfg.n_rois)]) * cfg.voxel_mm
    return labels, centroids


def latent_field(
    cfg: FrequencyControl, centroids: np.ndarray, smooth: bool, rng: np.random.Generator
) -> np.ndarray:
    """Token frequencies [n_rois, n_patches] in cycles per patch, uniform on [f_min, f_max]
    for every token in both classes; smooth over space and time only when `smooth`."""
    n_patches = cfg.n_frames // PATCH
    u = uniform_field(centroids, n_patches, cfg.space_mm, cfg.time_patches, smooth, rng)
    return cfg.f_min + (cfg.f_max - cfg.f_min) * u


def roi_signals(freq: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """[n_rois, n_patches * 16]: per token a sinusoid at its frequency with a random phase, plus
    white noise of standard deviation `noise`."""
    n_rois, n_patches = freq.shape
    k = np.arange(PATCH)
    phase = rng.uniform(0, 2 * np.pi, size=freq.shape)
    wave = np.sin(2 * np.pi * freq[..., None] * k / PATCH + phase[..., None])
    wave += noise * rng.standard_normal(wave.shape)
    return wave.reshape(n_rois, n_patches * PATCH)


def token_oracle(tokens: np.ndarray, f_min: float = 1.5, f_max: float = 4.5) -> np.ndarray:
    """The best single-token feature: the peak of each token's zero-padded periodogram
    within the band, in cycles per patch ([..., patch] -> [...])."""
    nfft = 256
    spec = np.abs(np.fft.rfft(tokens - tokens.mean(-1, keepdims=True), nfft, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(nfft) * tokens.shape[-1]
    band = (freqs >= f_min - 0.5) & (freqs <= f_max + 0.5)
    return freqs[band][spec[..., band].argmax(-1)]


def generate_frequency_control(
    out_dir: str | Path, n_subjects: int, seed: int = 0, cfg: FrequencyControl | None = None
) -> list[str]:
    """Write the control cohort (see the module docstring); returns the scan paths.

    Deterministic in (n_subjects, seed, cfg). Subjects alternate between the classes.
    """
    import nibabel as nib

    cfg = cfg or FrequencyControl()
    out = Path(out_dir)
    bids = out / "bids"
    bids.mkdir(parents=True, exist_ok=True)
    labels, centroids = parcellate_ellipsoid(cfg, seed)
    affine = np.diag([cfg.voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -(np.array(cfg.shape) - 1) / 2 * cfg.voxel_mm
    _save_nifti(nib.Nifti1Image(labels, affine), out / "atlas.nii.gz")
    inside = labels > 0
    owner = labels[inside].astype(np.int64) - 1
    width = max(2, len(str(n_subjects)))
    rows: list[tuple] = []
    paths = []
    for i in range(n_subjects):
        rng = np.random.default_rng([seed, i, 0x4652])
        smooth = i % 2 == 1
        freq = latent_field(cfg, centroids, smooth, rng)
        signal = roi_signals(freq, cfg.noise, rng)  # [rois, frames]
        baseline = 1000.0 * (1 + 0.05 * rng.standard_normal(int(inside.sum())))
        bold = baseline[:, None] * (1 + 0.02 * signal[owner])
        bold += rng.standard_normal(bold.shape) * 2.0  # voxel noise, ~0.1 of the ROI signal
        data = np.zeros(cfg.shape + (cfg.n_frames,), dtype=np.int16)
        data[inside] = np.clip(np.rint(bold), -32768, 32767).astype(np.int16)
        sub = f"sub-{i + 1:0{width}d}"
        func = bids / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((cfg.voxel_mm,) * 3 + (cfg.tr,))
        path = func / f"{sub}_task-rest_bold.nii.gz"
        _save_nifti(img, path)
        per_frame = np.repeat(freq, PATCH, axis=1).T  # [frames, rois]
        header = "\t".join(f"roi-{k + 1}" for k in range(cfg.n_rois))
        body = "\n".join("\t".join(f"{v:.5f}" for v in row) for row in per_frame)
        atomic_write_text(func / f"{sub}_task-rest{LATENT_SUFFIX}", header + "\n" + body + "\n")
        rows.append((sub, "smooth" if smooth else "independent"))
        paths.append(str(path))
    write_participants(bids / "participants.tsv", ("field",), rows)
    atomic_write_text(
        bids / "dataset_description.json",
        json.dumps({"Name": "jepa-forge fMRI positive control", "BIDSVersion": "1.8.0"}),
    )
    params = {**asdict(cfg), "n_subjects": n_subjects, "seed": seed, "patch": PATCH}
    atomic_write_text(out / "control.json", json.dumps(params, indent=2))
    return paths


def _save_nifti(img, path: Path) -> None:
    import nibabel as nib

    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)  # a killed run never leaves a half-written file under the real name


def read_latent(scan_path: str | Path) -> np.ndarray:
    """The latent frequencies of a scan written by `generate_frequency_control`: [frames, rois]."""
    scan = Path(scan_path)
    name = scan.name.removesuffix(".gz").removesuffix(".nii").removesuffix("_bold")
    side = scan.with_name(name + LATENT_SUFFIX)
    if not side.is_file():
        raise FileNotFoundError(f"{scan}: no latent sidecar {side.name} next to it")
    return np.loadtxt(side, delimiter="\t", skiprows=1, ndmin=2)


def token_latents(record: dict, patch_len: int = PATCH) -> np.ndarray:
    """The latent frequency of each of a record's tokens [N], in the order of the fMRI
    tokenizer (ROI-major, then time patch; the record's missing ROIs left out), read from the
    sidecar of the record's source scan."""
    latent = read_latent(record["source"])
    start = int(record["window_start"])
    window = np.asarray(record["bold"]).shape[1]
    frames = latent[start : start + window].T  # [rois, window]
    per_token = frames.reshape(frames.shape[0], window // patch_len, patch_len).mean(-1)
    missing = record.get("missing_rois")
    if missing is not None and len(missing):
        per_token = np.delete(per_token, np.asarray(missing, dtype=np.int64), axis=0)
    return per_token.reshape(-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modalities.fmri.control",
        description="Write the fMRI positive-control cohort (NIfTI + atlas + labels + latents).",
    )
    p.add_argument("out", help="output directory (bids/, atlas.nii.gz, control.json)")
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=FrequencyControl.n_frames)
    args = p.parse_args(argv)
    if args.subjects < 2:
        p.error("--subjects must be at least 2 (one per class)")
    try:
        paths = generate_frequency_control(
            args.out, args.subjects, args.seed, FrequencyControl(n_frames=args.frames)
        )
    except (ValueError, OSError) as e:
        print(f"modalities.fmri.control: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} scans, atlas and labels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
