"""EEG: recordings in any format MNE reads -> fixed-channel windows (S-JEPA input), stats, demo.

- options.py: `EegOptions` and the named channel sets ("10-20", "10-10").
- channels.py: channel-name normalisation and the standard_1005 position table.
- reader.py: one recording -> records (header checks, channel mapping, filters, windows).
- stats.py: per-channel robust scaling, positions and notes over a dataset.
- demo.py: a synthetic eyes-open / eyes-closed cohort written as EDF+ and FIF.
- sjepa.py: S-JEPA's tokenizer, embedder and spatial block masker (imports torch; loaded only by
  the model-side hooks, so Ray workers reading files never import torch).

docs/eeg.md is the user guide. Imports numpy and pyarrow at top level, MNE inside functions.
Never imports `engine` or `pipelines`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from modalities.base import Modality, ReadContext
from modalities.bids import add_participants_option
from modalities.eeg.channels import resolve_channels
from modalities.eeg.options import (
    BAD_POLICIES,
    CHANNEL_SETS,
    LABEL_SOURCES,
    UNKNOWN_POLICIES,
    EegOptions,
    SJepaMethod,
)
from modalities.eeg.reader import EXTENSIONS, is_recording, read_recording, record_schema
from modalities.eeg.stats import fit_eeg_stats


def _channels_arg(text: str) -> str | tuple[str, ...]:
    """`--channels`: a named set, or a comma-separated list of channel names."""
    if text in CHANNEL_SETS:
        return text
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give a named set or a comma-separated list of names")
    return names


def _floats_arg(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


class EegModality(Modality):
    """EEG recordings -> windows of channels x time on a fixed channel set (module docstring)."""

    name = "eeg"
    extensions = EXTENSIONS
    options_type = EegOptions
    method_type = SJepaMethod
    demo_size = 16
    # (channel, second): `modalities.eeg.sjepa`'s CHANNEL and SECOND columns. Not the xyz
    # columns, which differ between recordings with their own digitised montage.
    position_columns = (0, 1)

    def draw(self, ds, index, rng, opts):
        from modalities.show import draw_eeg

        return draw_eeg(ds, index, rng, opts)

    def matches(self, path: str) -> bool:
        return is_recording(path)

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("EEG options")
        d = EegOptions()  # the defaults live there, once
        g.add_argument(
            "--channels",
            dest="eeg_channels",
            type=_channels_arg,
            default=d.channels,
            metavar="SET|A,B,...",
            help=f"fixed channel set of every record: {', '.join(CHANNEL_SETS)} "
            f"(default {d.channels}, 19 channels) or a comma-separated list of names",
        )
        g.add_argument(
            "--unknown-channels",
            dest="eeg_unknown_channels",
            choices=UNKNOWN_POLICIES,
            default=d.unknown_channels,
            help="channels of --channels with no 10-05 position: keep (position NaN, default) "
            "or drop",
        )
        g.add_argument(
            "--sfreq",
            dest="eeg_sfreq",
            type=float,
            default=d.sfreq,
            metavar="HZ",
            help=f"resample every recording to this rate (default {d.sfreq:g}, S-JEPA)",
        )
        g.add_argument(
            "--window",
            dest="eeg_window",
            type=float,
            default=d.window_s,
            metavar="SECONDS",
            help=f"seconds per record (default {d.window_s:g})",
        )
        g.add_argument(
            "--hop",
            dest="eeg_hop",
            type=float,
            metavar="SECONDS",
            help="seconds between window starts (default: the window, no overlap)",
        )
        g.add_argument(
            "--high-pass",
            dest="eeg_high_pass",
            type=float,
            default=d.high_pass,
            metavar="HZ",
            help=f"high-pass edge in Hz (default {d.high_pass:g}; 0 = off)",
        )
        g.add_argument(
            "--low-pass", dest="eeg_low_pass", type=float, metavar="HZ", help="low-pass edge in Hz"
        )
        g.add_argument(
            "--notch",
            dest="eeg_notch",
            type=_floats_arg,
            default=d.notch,
            metavar="HZ[,HZ...]",
            help="line frequencies to notch out, e.g. 50 or 60,120 (default none)",
        )
        g.add_argument(
            "--bad-channels",
            dest="eeg_bad_channels",
            choices=BAD_POLICIES,
            default=d.bad_channels,
            help="a flat or non-finite channel in a window: zero it and clear its mask bit "
            "(drop-channel, default) or skip the window (drop-window)",
        )
        g.add_argument(
            "--flat-uv",
            dest="eeg_flat_uv",
            type=float,
            default=d.flat_uv,
            metavar="UV",
            help="peak-to-peak below which a channel is flat in a window "
            f"(default {d.flat_uv:g} uV)",
        )
        g.add_argument(
            "--min-channels",
            dest="eeg_min_channels",
            type=int,
            default=d.min_channels,
            metavar="N",
            help=f"refuse recordings with fewer channels of the set (default {d.min_channels})",
        )
        g.add_argument(
            "--label-from",
            dest="eeg_label_from",
            choices=LABEL_SOURCES,
            default=d.label_from,
            help="what fills the label column: the BIDS task entity (default) or none",
        )
        add_participants_option(g, "eeg_participants_columns")

    def options_from_args(self, args: argparse.Namespace) -> EegOptions:
        d = EegOptions()
        get = lambda name, field: getattr(args, f"eeg_{name}", getattr(d, field))  # noqa: E731
        high_pass = get("high_pass", "high_pass")
        return EegOptions(
            channels=get("channels", "channels"),
            unknown_channels=get("unknown_channels", "unknown_channels"),
            sfreq=get("sfreq", "sfreq"),
            window_s=get("window", "window_s"),
            hop_s=get("hop", "hop_s"),
            high_pass=high_pass if high_pass else None,
            low_pass=get("low_pass", "low_pass"),
            notch=get("notch", "notch"),
            bad_channels=get("bad_channels", "bad_channels"),
            flat_uv=get("flat_uv", "flat_uv"),
            min_channels=get("min_channels", "min_channels"),
            label_from=get("label_from", "label_from"),
            participants_columns=tuple(get("participants_columns", "participants_columns")),
        )

    def schema(self, opts: EegOptions) -> pa.Schema:
        cs = resolve_channels(opts)
        metadata = {
            "eeg.channels": json.dumps(list(cs.names)),
            "eeg.unknown_channels": json.dumps(list(cs.unknown)),
            "eeg.dropped_from_set": json.dumps(list(cs.dropped)),
            "eeg.units": "microvolts",
            "eeg.positions": "metres, MNE head frame",
        }
        return record_schema(
            len(cs.names), opts.window_samples, metadata, opts.participants_columns
        )

    def read(self, ctx: ReadContext, opts: EegOptions) -> Iterator[dict[str, Any]]:
        cs = resolve_channels(opts)
        return read_recording(ctx.local_path, ctx.source, ctx.max_file_bytes, opts, cs)

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: EegOptions) -> dict[str, Any]:
        return fit_eeg_stats(batches)

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        from modalities.eeg.demo import generate_cohort

        return generate_cohort(out_dir, n, seed)

    def warm_up(self) -> None:
        import mne  # noqa: F401
        import scipy.signal  # noqa: F401  (resampling and filters)

    def library_versions(self) -> dict[str, str]:
        import mne
        import numpy
        import scipy

        return {"mne": mne.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__}

    # -- model side: S-JEPA (sjepa.py imports torch, so it is loaded here, not at module import)

    def tokenize(self, record: dict[str, Any], stats: dict[str, Any], opts: Any) -> dict[str, Any]:
        from modalities.eeg.sjepa import spectrum_tokens, token_overlap, tokenize_record

        out = tokenize_record(record, stats, token_overlap(opts, record["sfreq"]))
        if opts.features == "spectrum":
            out["tokens"] = spectrum_tokens(out["tokens"], out["coords"], opts.spectrum_centering)
        return out

    def masker(self, opts: SJepaMethod) -> Any:
        from modalities.eeg.sjepa import SpatialBlockMasker

        return SpatialBlockMasker.from_options(opts)

    def embedder(self, opts: SJepaMethod, dim: int, stats: dict[str, Any] | None = None) -> Any:
        from modalities.eeg.sjepa import EegEmbedder

        sfreq = (stats or {}).get("sfreq", 128.0)
        if opts.features == "spectrum" and not float(sfreq).is_integer():
            raise ValueError(
                f"modality.features=spectrum takes 1-s tokens of a whole number of samples; "
                f"these records are {sfreq:g} Hz (ingest with --sfreq 128)"
            )
        bins = int(sfreq) // 2 + 1  # the rfft of one second
        return EegEmbedder(dim, opts.conv_widths, features=opts.features, bins=bins)

    def legacy_options(self, legacy: Mapping[str, Any]) -> dict[str, Any]:
        """Runs saved before modality options: the S-JEPA masker read mask.num_targets blocks
        of mask.target_scale of the channels each, and mask.min_context (`model.patch_len` was
        never read: EEG tokens are 1 s of one channel)."""
        spec = {
            "num": legacy.get("mask.num_targets", 4),
            "channel_scale": legacy.get("mask.target_scale", [0.15, 0.2]),
        }
        return {"masks": [spec], "min_context": legacy.get("mask.min_context", 0.1)}


MODALITY = EegModality()

__all__ = ["MODALITY", "EegModality", "EegOptions"]
