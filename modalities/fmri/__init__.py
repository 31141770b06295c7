"""fMRI: 4D NIfTI BOLD scans -> ROI x time windows (Brain-JEPA input), stats, demo data.

One scan (NIfTI-1 or NIfTI-2, `.nii` / `.nii.gz`) becomes an ROI x time matrix by averaging the
voxels of each parcel of a label atlas (`--atlas`, or the built-in 450-parcel MNI152 atlas shipped
in `modalities/data/`), is cleaned (linear detrend, optional band-pass, optional resampling to a
target TR, per-ROI z-scoring) and cut into windows of `window` frames (Brain-JEPA: 160), one record
per window. `fit_stats` computes what Brain-JEPA needs later: per-ROI robust scaling (median, IQR)
and brain gradients (diffusion-map embedding of group functional connectivity). `generate_cohort`
writes a synthetic BIDS-like cohort in MNI space with network structure. The model-side hooks
(tokenize / masker / embedder) are Brain-JEPA's, in `jepa.py`. docs/fmri.md is the user guide;
every policy below (TR units, missing ROIs, refused inputs) is described there too.

Submodules: options (FmriOptions, constants), atlas, scan (open, parcellate, clean, schema),
stats, demo, jepa (torch; imported only by the hooks).

Imports numpy and pyarrow at top level; nibabel, nilearn and scipy are imported inside functions so
the engine can import `modalities` without them. Never imports `engine` or `pipelines`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.base import Modality, ModalityError, ReadContext
from modalities.bids import add_participants_option, bids_entities, participant_values
from modalities.fmri.atlas import Atlas, _nearest_labels, atlas_on_grid, load_atlas
from modalities.fmri.demo import _NETWORK_NODES, generate_cohort, network_weights
from modalities.fmri.options import (
    BUILTIN_PREFIX,
    DEFAULT_ATLAS_PATH,
    BrainJepaConfig,
    FmriOptions,
)
from modalities.fmri.scan import (
    _open_scan,
    _schema,
    clean_signals,
    header_tr,
    parcellate,
    resample_tr,
)
from modalities.fmri.stats import connectivity_gradients, fit_fmri_stats

__all__ = [
    "DEFAULT_ATLAS_PATH",
    "MODALITY",
    "FmriModality",
    "FmriOptions",
    "_NETWORK_NODES",
    "_nearest_labels",
    "bids_entities",
    "connectivity_gradients",
    "fit_fmri_stats",
    "generate_cohort",
    "header_tr",
    "load_atlas",
    "network_weights",
    "resample_tr",
]

# --------------------------------------------------------------------------------------------
# The modality


def _coverage_error(atlas: Atlas, n_present: int, opts: FmriOptions) -> ModalityError:
    if atlas.is_default:
        hint = (
            "the built-in atlas is in MNI152 space: register the scan to MNI152, or pass "
            "--atlas LABELS.nii.gz in the scan's own space"
        )
    else:
        hint = "check that the atlas and the scan are in the same space (compare affines)"
    return ModalityError(
        f"only {n_present} of {atlas.n_rois} ROIs of the {atlas.description} have signal "
        f"in this scan (--min-roi-coverage {opts.min_roi_coverage:g}); {hint}"
    )


class FmriModality(Modality):
    """4D NIfTI BOLD scans -> windows of ROI x time (see the module docstring)."""

    name = "fmri"
    extensions = (".nii", ".nii.gz")
    options_type = FmriOptions
    method_type = BrainJepaConfig
    demo_size = 12

    def draw(self, ds, index, rng, opts):
        from modalities.show import draw_fmri

        return draw_fmri(ds, index, rng, opts)

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("fMRI options")
        d = FmriOptions()  # the defaults live there, once
        g.add_argument(
            "--atlas",
            dest="fmri_atlas",
            metavar="LABELS.nii[.gz]",
            help="label image (0 = background), or builtin:450 (default) / builtin:100, the "
            "shipped MNI152 parcellations (100 suits CPU demos)",
        )
        g.add_argument(
            "--tr", dest="fmri_tr", type=float, metavar="SECONDS", help="override the header TR"
        )
        g.add_argument(
            "--target-tr",
            dest="fmri_target_tr",
            type=float,
            metavar="SECONDS",
            help="resample every scan to this TR (default: keep each scan's TR)",
        )
        g.add_argument(
            "--window",
            dest="fmri_window",
            type=int,
            default=d.window,
            metavar="FRAMES",
            help=f"frames per record (default {d.window}, Brain-JEPA)",
        )
        g.add_argument(
            "--hop",
            dest="fmri_hop",
            type=int,
            metavar="FRAMES",
            help="frames between window starts (default: the window, i.e. no overlap)",
        )
        g.add_argument(
            "--detrend",
            dest="fmri_detrend",
            action=argparse.BooleanOptionalAction,
            default=d.detrend,
            help="remove a linear trend per ROI (default on)",
        )
        g.add_argument(
            "--high-pass", dest="fmri_high_pass", type=float, metavar="HZ", help="e.g. 0.01"
        )
        g.add_argument(
            "--low-pass", dest="fmri_low_pass", type=float, metavar="HZ", help="e.g. 0.1"
        )
        g.add_argument(
            "--standardize",
            dest="fmri_standardize",
            action=argparse.BooleanOptionalAction,
            default=d.standardize,
            help="z-score each ROI over the whole scan (default on)",
        )
        g.add_argument(
            "--min-roi-coverage",
            dest="fmri_min_roi_coverage",
            type=float,
            default=d.min_roi_coverage,
            metavar="FRACTION",
            help="refuse scans where fewer ROIs than this have signal "
            f"(default {d.min_roi_coverage:g})",
        )
        g.add_argument(
            "--gradient-dims",
            dest="fmri_gradient_dims",
            type=int,
            default=d.gradient_dims,
            metavar="N",
            help=f"brain-gradient dimensions in stats (default {d.gradient_dims})",
        )
        add_participants_option(g, "fmri_participants_columns")

    def options_from_args(self, args: argparse.Namespace) -> FmriOptions:
        d = FmriOptions()
        get = lambda name: getattr(args, f"fmri_{name}", getattr(d, name))  # noqa: E731
        atlas = get("atlas")
        return FmriOptions(
            # Absolute, so Ray workers with another working directory find the same file.
            atlas=(
                atlas
                if atlas is None or atlas.startswith(BUILTIN_PREFIX)
                else str(Path(atlas).expanduser().resolve())
            ),
            tr=get("tr"),
            target_tr=get("target_tr"),
            window=get("window"),
            hop=get("hop"),
            detrend=get("detrend"),
            high_pass=get("high_pass"),
            low_pass=get("low_pass"),
            standardize=get("standardize"),
            min_roi_coverage=get("min_roi_coverage"),
            gradient_dims=get("gradient_dims"),
            participants_columns=tuple(
                getattr(args, "fmri_participants_columns", d.participants_columns)
            ),
        )

    def schema(self, opts: FmriOptions) -> pa.Schema:
        atlas = load_atlas(opts.atlas)
        metadata = {
            "fmri.atlas": "default" if atlas.is_default else atlas.path,
            "fmri.atlas_sha256": atlas.sha256,
            "fmri.roi_labels": json.dumps(list(atlas.label_values)),
        }
        return _schema(atlas.n_rois, opts.window, metadata, opts.participants_columns)

    def read(self, ctx: ReadContext, opts: FmriOptions) -> Iterator[dict[str, Any]]:
        atlas = load_atlas(opts.atlas)
        scan = _open_scan(ctx.local_path, ctx.max_file_bytes, opts)
        grid = atlas_on_grid(atlas, scan.shape[:3], scan.img.affine)
        if grid.voxels.size == 0:
            raise _coverage_error(atlas, 0, opts)
        signals, present = parcellate(scan.img, grid)
        n_present = int(present.sum())
        if n_present < opts.min_roi_coverage * atlas.n_rois:
            raise _coverage_error(atlas, n_present, opts)
        signals, present, out_tr = clean_signals(signals, present, scan.tr, opts)
        missing = [int(i) for i in np.flatnonzero(~present)]
        entities = bids_entities(ctx.source)
        extra = participant_values(ctx.source, entities["subject"], opts.participants_columns)
        bold = signals.astype(np.float32)
        for start in range(0, bold.shape[0] - opts.window + 1, opts.hop):
            yield {
                **extra,
                **entities,
                "window_start": start,
                "window_start_s": start * out_tr,
                "tr": out_tr,
                "n_rois": atlas.n_rois,
                "n_missing_rois": len(missing),
                "missing_rois": missing,
                "bold": np.ascontiguousarray(bold[start : start + opts.window].T),
            }

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: FmriOptions) -> dict[str, Any]:
        return fit_fmri_stats(
            batches, gradient_dims=opts.gradient_dims, standardized=opts.standardize
        )

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        return generate_cohort(out_dir, n, seed)

    # -- model side: Brain-JEPA (jepa.py). Imported on first use so Ray ingest workers, which
    # only read scans, never import torch.

    def tokenize(self, record: dict[str, Any], stats: dict[str, Any], opts: Any) -> dict[str, Any]:
        from modalities.fmri.jepa import tokenize_record

        return tokenize_record(record, stats, opts.patch_len, opts.scaling)

    def masker(self, opts: Any) -> Any:
        from modalities.fmri.jepa import SpatiotemporalMasker

        return SpatiotemporalMasker(opts)

    def embedder(self, opts: Any, dim: int, stats: dict[str, Any] | None = None) -> Any:
        """Brain-JEPA's embedder; gradient positions from `stats` (the engine passes the training
        dataset's, saved in checkpoints and exports)."""
        from modalities.fmri.jepa import build_embedder

        return build_embedder(opts, dim, stats)

    def legacy_options(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """Runs saved before modality options: `model.patch_len` was the patch length; the fMRI
        masker never read `mask.*` (Brain-JEPA's own options were in `modality:` already)."""
        return {"patch_len": legacy.get("model.patch_len", 16)}

    def warm_up(self) -> None:
        import nibabel  # noqa: F401

        try:
            import isal.igzip  # noqa: F401
        except ImportError:  # optional speed-up
            pass
        load_atlas(None)

    def library_versions(self) -> dict[str, str]:
        import nibabel
        import nilearn
        import scipy

        return {
            "nibabel": nibabel.__version__,
            "nilearn": nilearn.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        }


MODALITY = FmriModality()
