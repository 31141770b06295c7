"""Audio: any file soundfile / librosa decode -> 16 kHz mono Kaldi log-mel segments (A-JEPA input).

- options.py: `AudioOptions` (rate, mel bins, segment and hop, labels).
- fbank.py: the Kaldi-compatible log-mel (AudioMAE's and A-JEPA's `fbank`), in numpy.
- reader.py: one file -> records (decoding, checks, mono, soxr resampling, segments, labels).
- stats.py: the dataset's log-mel mean and std over real frames.
- demo.py: a synthetic cohort of note pairs written as WAV, FLAC, OGG and MP3.
- ajepa.py: A-JEPA's patches, masking curriculum and embedder (imports torch; loaded only by the
  model-side hooks, so Ray workers reading files never import torch).

docs/audio.md is the user guide. Imports numpy and pyarrow at top level, soundfile, soxr and
librosa inside functions. Never imports `engine` or `pipelines`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from modalities.audio.options import AJepaMethod, AudioOptions
from modalities.audio.reader import (
    EXTENSIONS,
    is_audio,
    read_audio,
    record_schema,
)
from modalities.audio.stats import fit_audio_stats
from modalities.base import Modality, ReadContext
from modalities.labels import add_label_arguments, label_arguments


class AudioModality(Modality):
    """Audio files -> fixed-length log-mel segments (module docstring)."""

    name = "audio"
    extensions = EXTENSIONS
    options_type = AudioOptions
    method_type = AJepaMethod
    demo_size = 48

    def matches(self, path: str) -> bool:
        return is_audio(path)

    def add_cli_options(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("audio options")
        d = AudioOptions()
        g.add_argument(
            "--sample-rate",
            dest="audio_sample_rate",
            type=int,
            default=d.sample_rate,
            metavar="HZ",
            help=f"mix to mono and resample (soxr) to this rate (default {d.sample_rate})",
        )
        g.add_argument(
            "--n-mels",
            dest="audio_n_mels",
            type=int,
            default=d.n_mels,
            help=f"mel bins of the Kaldi log-mel (default {d.n_mels})",
        )
        g.add_argument(
            "--segment",
            dest="audio_segment",
            type=int,
            default=d.segment_frames,
            metavar="FRAMES",
            help=f"10-ms frames per record (default {d.segment_frames}, 10.24 s)",
        )
        g.add_argument(
            "--hop",
            dest="audio_hop",
            type=int,
            default=None,
            metavar="FRAMES",
            help="frames between record starts (default: the segment, no overlap)",
        )
        g.add_argument(
            "--min-frames",
            dest="audio_min_frames",
            type=int,
            default=d.min_frames,
            metavar="FRAMES",
            help=f"drop a last segment with fewer real frames; refuse shorter files "
            f"(default {d.min_frames}, one patch)",
        )
        add_label_arguments(g, "audio", "ESC-50: category")

    def options_from_args(self, args: argparse.Namespace) -> AudioOptions:
        d = AudioOptions()
        get = lambda name, default: getattr(args, f"audio_{name}", default)  # noqa: E731
        labels, csv_path, column = label_arguments(args, "audio")
        return AudioOptions(
            sample_rate=get("sample_rate", d.sample_rate),
            n_mels=get("n_mels", d.n_mels),
            segment_frames=get("segment", d.segment_frames),
            hop_frames=get("hop", None),
            min_frames=get("min_frames", d.min_frames),
            labels=labels,
            labels_csv=csv_path,
            label_column=column,
        )

    def schema(self, opts: AudioOptions) -> pa.Schema:
        return record_schema(opts)

    def read(self, ctx: ReadContext, opts: AudioOptions) -> Iterator[dict[str, Any]]:
        return read_audio(ctx, opts)

    def fit_stats(self, batches: Iterable[pa.RecordBatch], opts: AudioOptions) -> dict[str, Any]:
        return fit_audio_stats(batches)

    def demo(self, out_dir: str | Path, n: int, seed: int) -> list[str]:
        from modalities.audio.demo import generate_cohort

        return generate_cohort(out_dir, n, seed)

    def warm_up(self) -> None:
        import soundfile  # noqa: F401
        import soxr  # noqa: F401

    def library_versions(self) -> dict[str, str]:
        import numpy
        import soundfile
        import soxr

        return {
            "soundfile": soundfile.__version__,
            "libsndfile": soundfile.__libsndfile_version__,
            "soxr": soxr.__version__,
            "numpy": numpy.__version__,
        }

    # -- model side: A-JEPA

    def tokenize(self, record: dict[str, Any], stats: dict[str, Any], opts: AJepaMethod) -> dict:
        from modalities.audio.ajepa import spectrogram_patches

        tokens, coords = spectrogram_patches(
            record["mel"],
            record["valid_frames"],
            stats.get("mean", 0.0),
            stats.get("std", 1.0),
            opts.patch_freq,
            opts.patch_time,
        )
        return {"tokens": tokens, "coords": coords}

    def masker(self, opts: AJepaMethod) -> Any:
        from modalities.audio.ajepa import CurriculumMasker

        return CurriculumMasker(opts)

    def embedder(self, opts: AJepaMethod, dim: int, stats: dict[str, Any] | None = None) -> Any:
        from modalities.grid import GridEmbedder

        return GridEmbedder(opts.patch_freq * opts.patch_time, dim)

    def draw(self, ds, index, rng, opts):
        from modalities.show import draw_audio

        return draw_audio(ds, index, rng, opts)


MODALITY = AudioModality()

__all__ = ["MODALITY", "AudioModality", "AudioOptions"]
