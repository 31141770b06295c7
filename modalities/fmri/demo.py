"""A deterministic synthetic BIDS-like resting-state cohort in MNI152 space."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from modalities.bids import write_participants
from pipelines.shards import atomic_write_text

# --------------------------------------------------------------------------------------------
# Demo cohort

#: Approximate MNI coordinates (mm) of canonical resting-state network nodes (as commonly used
#: seeds; cf. Yeo et al. 2011's 7 networks). x > 0 nodes are mirrored to the left hemisphere.
_NETWORK_NODES: dict[str, list[tuple[float, float, float]]] = {
    "default": [(0, -52, 26), (0, 52, -6), (46, -66, 30)],
    "visual": [(10, -90, 2), (24, -76, -10)],
    "somatomotor": [(38, -22, 58), (56, -10, 30)],
    "dorsal_attention": [(26, -58, 52), (24, -8, 54)],
    "salience": [(36, 18, 2), (0, 20, 40)],
    "frontoparietal": [(44, 30, 28), (50, -50, 44)],
    "limbic": [(28, -16, -20), (24, 30, -16)],
}
#: In group "coupled" the default and frontoparietal networks share this much of their signal.
_GROUP_COUPLING = {"control": 0.0, "coupled": 0.7}
_DEMO_CHUNK = 8192


def network_weights(xyz: np.ndarray, sigma_mm: float = 15.0) -> np.ndarray:
    """[n, networks] soft membership of MNI points: Gaussian in the distance to each network's
    nearest node (nodes mirrored across the midline), normalised to sum to 1 per point."""
    nets = []
    for nodes in _NETWORK_NODES.values():
        pts = np.array([(sx, y, z) for x, y, z in nodes for sx in ((x, -x) if x else (x,))])
        dist = np.linalg.norm(xyz[:, None, :] - pts[None, :, :], axis=2).min(axis=1)
        nets.append(dist)
    dist = np.stack(nets, axis=1)
    # Subtracting each point's minimum keeps exp() away from underflow far from every node.
    logits = -((dist**2) - (dist.min(axis=1, keepdims=True) ** 2)) / (2 * sigma_mm**2)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def _band_limited_noise(
    rng: np.random.Generator, n: int, tr: float, lo: float = 0.01, hi: float = 0.1
) -> np.ndarray:
    """Unit-variance noise limited to [lo, hi] Hz: the classic resting-state BOLD band."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=tr)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, n)
    return (x - x.mean()) / (x.std() + 1e-12)


@functools.lru_cache(maxsize=2)
def _mni_grid(voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(brain mask, affine) of nilearn's offline MNI152 brain mask on a `voxel_mm` grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = load_mni152_brain_mask(resolution=2)
    ratio = voxel_mm / 2.0
    shape = tuple(int(np.ceil(s / ratio)) for s in mask.shape)
    affine = np.array(mask.affine, dtype=np.float64)
    affine[:3, :3] = np.diag([voxel_mm] * 3)
    out = resample_img(
        mask,
        target_affine=affine,
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.dataobj) > 0, affine


def generate_cohort(
    out_dir: str | Path,
    n_subjects: int,
    seed: int,
    n_frames: int = 480,
    voxel_mm: float = 4.0,
    tr: float = 2.0,
) -> list[str]:
    """Write a deterministic synthetic BIDS-like resting-state cohort in MNI152 space.

    Each voxel = baseline * (1 + 1% network signal + 0.2% global signal) + slow drift + 1% noise,
    stored as int16 like scanner output. Network signals are 0.01-0.1 Hz noise; every voxel mixes
    them with `network_weights` (mostly its nearest network's, so the whole brain has network
    structure). participants.tsv gives each subject a `group`:
    in "coupled" subjects the default and frontoparietal networks share 70% of their signal (a
    connectivity difference a probe can find). Returns the scan paths.
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    brain, affine = _mni_grid(voxel_mm)
    ijk = np.argwhere(brain)
    xyz = nib.affines.apply_affine(affine, ijk)
    centre_dist = np.linalg.norm(xyz - xyz.mean(axis=0), axis=1)
    names = list(_NETWORK_NODES)
    weights = network_weights(xyz).astype(np.float32)
    default_k, fp_k = names.index("default"), names.index("frontoparietal")

    width = max(2, len(str(n_subjects)))
    rows: list[tuple] = []
    paths = []
    for i in range(n_subjects):
        rng = np.random.default_rng([seed, i])
        group = "coupled" if i % 2 else "control"
        coupling = _GROUP_COUPLING[group]
        signals = np.stack([_band_limited_noise(rng, n_frames, tr) for _ in names])
        signals = signals.astype(np.float32)
        shared = signals[default_k]
        signals[fp_k] = np.sqrt(1 - coupling**2) * signals[fp_k] + coupling * shared
        global_signal = _band_limited_noise(rng, n_frames, tr).astype(np.float32)
        # Baseline: brighter centre (like EPI's coil profile), plus voxel-wise variation.
        baseline = 900 + 300 * np.exp(-(centre_dist**2) / (2 * 60.0**2))
        baseline = baseline * (1 + 0.05 * rng.standard_normal(len(ijk)))
        slope = rng.normal(0, 10, len(ijk)).astype(np.float32)
        wobble = rng.normal(0, 5, len(ijk)).astype(np.float32)
        t = np.linspace(0, 1, n_frames, dtype=np.float32)
        data = np.zeros(brain.shape + (n_frames,), dtype=np.int16, order="F")  # NIfTI order
        for lo in range(0, len(ijk), _DEMO_CHUNK):  # bounded memory at fine voxel sizes
            sl = slice(lo, lo + _DEMO_CHUNK)
            # float32 is plenty for values stored as int16, and twice as fast to generate.
            base = baseline[sl, None].astype(np.float32)
            bold = base * (1 + 0.01 * (weights[sl] @ signals) + 0.002 * global_signal)
            bold += np.outer(slope[sl], t) + np.outer(wobble[sl], np.cos(np.pi * t))
            bold += rng.standard_normal(bold.shape, dtype=np.float32) * (0.01 * base)
            v = ijk[sl]
            data[v[:, 0], v[:, 1], v[:, 2]] = np.clip(np.rint(bold), -32768, 32767)

        sub = f"sub-{i + 1:0{width}d}"
        func = out / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((voxel_mm, voxel_mm, voxel_mm, tr))
        img.header.set_qform(affine, code=4)  # 4 = MNI_152
        img.header.set_sform(affine, code=4)
        path = func / f"{sub}_task-rest_bold.nii.gz"
        tmp = func / f".{sub}_task-rest_bold.tmp.nii.gz"
        nib.save(img, tmp)
        os.replace(tmp, path)  # a killed run never leaves a half-written scan under the real name
        atomic_write_text(func / f"{sub}_task-rest_bold.json", json.dumps({"RepetitionTime": tr}))
        rows.append((sub, group, coupling))
        paths.append(str(path))
    write_participants(out / "participants.tsv", ("group", "coupling"), rows)
    atomic_write_text(
        out / "dataset_description.json",
        json.dumps({"Name": "jepa-forge synthetic resting-state cohort", "BIDSVersion": "1.8.0"}),
    )
    return paths
