"""Generate the built-in default fMRI parcellation shipped next to this script.

Run once by a developer (`python modalities/data/make_default_atlas.py --parcels 450`, and
`--parcels 100` for the small one); ingest only reads the results, `default_atlas_{450,100}.nii.gz`
(+ `.tsv`), so it never downloads anything.

How it is made (docs/fmri.md says the same for users):
1. nilearn's bundled MNI152 (2009) brain mask at 2 mm (`load_mni152_brain_mask(resolution=2)`,
   offline, 99 x 117 x 95 voxels).
2. The midline plane x = 0 mm is left unlabelled, so no parcel straddles the two hemispheres.
3. Left voxels and the mirror images (|x|, y, z) of right voxels are pooled, and k-means on those
   mm coordinates gives 225 centres. Every left voxel takes its nearest centre's label, every
   right voxel its mirror's nearest centre's label + 225: parcels i and i + 225 are mirror-image
   homologues.
4. Labels are numbered by centre position (y, then z, then x, rounded to 0.1 mm), so the numbering
   does not depend on k-means' arbitrary cluster order.

450 parcels matches Brain-JEPA's ROI count (Schaefer-400 + Tian-S3 50). These are compact geometric
parcels, not functional ones: good enough for demos and smoke tests of the whole pipeline; for
science pass a functional atlas (e.g. Schaefer) with `--atlas`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

N_PER_HEMISPHERE = 225
HERE = Path(__file__).resolve().parent


def make_default_atlas(n_per_hemisphere: int = N_PER_HEMISPHERE, seed: int = 0):
    """Return (label image, rows for the TSV) of the hemisphere-split k-means parcellation."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from sklearn.cluster import KMeans

    mask_img = load_mni152_brain_mask(resolution=2)
    mask = np.asarray(mask_img.dataobj) > 0
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(mask_img.affine, ijk)
    left = xyz[:, 0] < 0
    right = xyz[:, 0] > 0
    folded = np.abs(xyz)
    folded[:, 1:] = xyz[:, 1:]

    km = KMeans(n_clusters=n_per_hemisphere, n_init=4, random_state=seed, algorithm="lloyd")
    km.fit(folded[left | right])
    centres = km.cluster_centers_
    order = np.lexsort(np.round(centres[:, [0, 2, 1]], 1).T)  # primary key y, then z, then x
    rank = np.empty(n_per_hemisphere, dtype=np.int64)
    rank[order] = np.arange(n_per_hemisphere)

    nearest = rank[km.predict(folded)] + 1
    labels = np.zeros(mask.shape, dtype=np.int16)
    sel = ijk[left]
    labels[sel[:, 0], sel[:, 1], sel[:, 2]] = nearest[left]
    sel = ijk[right]
    labels[sel[:, 0], sel[:, 1], sel[:, 2]] = nearest[right] + n_per_hemisphere

    img = nib.Nifti1Image(labels, mask_img.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(mask_img.affine, code=4)  # 4 = MNI_152
    img.header.set_sform(mask_img.affine, code=4)
    img.header["descrip"] = b"jepa-forge default atlas: 2x225 k-means MNI152 2mm"

    rows = []
    for label in range(1, 2 * n_per_hemisphere + 1):
        pts = xyz[labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == label]
        c = pts.mean(axis=0)
        rows.append(
            {
                "index": label - 1,
                "label": label,
                "hemisphere": "L" if label <= n_per_hemisphere else "R",
                "x_mm": f"{c[0]:.1f}",
                "y_mm": f"{c[1]:.1f}",
                "z_mm": f"{c[2]:.1f}",
                "n_voxels_2mm": len(pts),
            }
        )
    return img, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(HERE))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parcels",
        type=int,
        default=2 * N_PER_HEMISPHERE,
        help="total parcels, even (450: Brain-JEPA's count; 100: the CPU demo's)",
    )
    args = parser.parse_args()
    if args.parcels % 2 or args.parcels < 2:
        parser.error("--parcels must be a positive even number (half per hemisphere)")
    import nibabel as nib

    img, rows = make_default_atlas(args.parcels // 2, seed=args.seed)
    out = Path(args.out_dir)
    nib.save(img, out / f"default_atlas_{args.parcels}.nii.gz")
    with open(out / f"default_atlas_{args.parcels}.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    sizes = [r["n_voxels_2mm"] for r in rows]
    print(f"wrote {len(rows)} parcels to {out}; voxels per parcel {min(sizes)}-{max(sizes)}")


if __name__ == "__main__":
    main()
