"""One audio file -> log-mel segment records (A-JEPA input).

Decoding: soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF, ...) first; what it
cannot open goes to librosa's audioread fallback (ffmpeg / GStreamer where installed). Then mono
(the channel mean), resampling with soxr (high quality) to the options' rate, the Kaldi-compatible
log-mel of modalities/audio/fbank.py, and segments of `segment_frames` frames every `hop_frames`,
the last one padded with the log floor and marked by `valid_frames`.

Refused with a reason (the ingest quarantines the file and goes on): an empty file, a file or
decoded payload over --max-file-bytes, a header no decoder accepts, a stream that ends before
its header says, non-finite samples, a silent file, a file too short for one patch.

Imports numpy and pyarrow at top level; soundfile, soxr and librosa inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.audio.fbank import LOG_FLOOR, log_mel, num_frames
from modalities.audio.options import SILENCE_PEAK, AudioOptions
from modalities.base import ModalityError, ReadContext
from modalities.bids import bids_entities
from modalities.labels import file_label

#: file-name suffixes a directory scan picks up (what libsndfile and common codecs write)
EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".m4a")


def record_schema(opts: AudioOptions) -> pa.Schema:
    """Schema of the records: fixed by the options alone."""
    fields = [
        ("subject", pa.string()),
        ("label", pa.string()),
        ("offset_s", pa.float64()),
        ("valid_frames", pa.int32()),
        ("sample_rate", pa.int32()),
        ("source_sample_rate", pa.int32()),
        ("source_channels", pa.int32()),
        ("source_seconds", pa.float64()),
        ("mel", pa.fixed_shape_tensor(pa.float16(), [opts.n_mels, opts.segment_frames])),
    ]
    metadata = {
        "audio.features": "Kaldi fbank: natural log of mel power, 25 ms Hann frames, 10 ms hop",
        "audio.layout": "mel [n_mels, frames], low frequencies first",
        "audio.sample_rate": str(opts.sample_rate),
        "audio.pad_value": repr(LOG_FLOOR),
    }
    return pa.schema(fields, metadata=metadata)


def label_of(source: str, opts: AudioOptions) -> str | None:
    """The file's class from its folder or the labels CSV (None when it has none)."""
    return file_label(source, opts.labels, opts.labels_csv, opts.label_column)


# --------------------------------------------------------------------------------------------
# Decoding


def _decode_soundfile(path: str, max_bytes: int) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(path) as f:
        frames, channels, rate = f.frames, f.channels, f.samplerate
        if rate <= 0:
            raise ModalityError(f"corrupt header: sample rate {rate}")
        payload = frames * channels * 4
        if payload > max_bytes:
            raise ModalityError(
                f"decoded audio would be {payload} bytes ({frames} frames x {channels} "
                f"channels, float32), over --max-file-bytes {max_bytes}"
            )
        try:
            data = f.read(dtype="float32", always_2d=True)
        except sf.LibsndfileError as e:
            raise ModalityError(f"truncated or corrupt stream: {e}") from None
    if frames > 0 and len(data) < frames:
        raise ModalityError(
            f"truncated stream: the header declares {frames} frames, only {len(data)} decode"
        )
    return data, rate


def _decode_librosa(path: str, first_error: str) -> tuple[np.ndarray, int]:
    """The fallback for what libsndfile cannot open: librosa's audioread backends."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that it falls back; we say so below
            y, rate = librosa.load(path, sr=None, mono=False)
    except Exception as e:  # noqa: BLE001 - audioread raises many types; all mean "cannot decode"
        reason = str(e) or type(e).__name__
        raise ModalityError(
            f"cannot decode: libsndfile says {first_error!r}; the audioread fallback says "
            f"{reason!r} (an unsupported codec, or not an audio file)"
        ) from None
    y = np.asarray(y, dtype=np.float32)
    return (y[:, None] if y.ndim == 1 else y.T), int(rate)


def check_container(path: str) -> None:
    """Truncation checks libsndfile does not make: it reads a WAV whose data chunk is cut short,
    or an Ogg stream that stops mid-way, as a shorter file without a word."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk = f.read(8)
                length = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"data":
                    # 0 and 0xFFFFFFFF: streaming writers and RF64 leave the size open
                    if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:
                        raise ModalityError(
                            f"truncated WAV: the data chunk declares {length} bytes, the file "
                            f"holds {size - pos - 8}"
                        )
                    return
                pos += 8 + length + (length & 1)
        elif head[:4] == b"OggS":
            f.seek(max(0, size - 65536))
            tail = f.read()
            last = tail.rfind(b"OggS")
            if last < 0 or len(tail) < last + 6 or not tail[last + 5] & 0x04:
                raise ModalityError(
                    "truncated Ogg stream: its last page carries no end-of-stream flag"
                )


def decode(path: str, max_bytes: int) -> tuple[np.ndarray, int]:
    """(samples float32 [frames, channels], sample rate) of an audio file."""
    import soundfile as sf

    check_container(path)
    try:
        return _decode_soundfile(path, max_bytes)
    except sf.LibsndfileError as e:
        return _decode_librosa(path, str(e))


def to_mono_rate(data: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Channel mean, resampled to `target` Hz with soxr's high-quality filter."""
    # Column by column in float32: numpy's mean over the short axis of [frames, channels]
    # costs ten times the resampling on long files.
    mono = np.array(data[:, 0], dtype=np.float32)
    for c in range(1, data.shape[1]):
        mono += data[:, c]
    if data.shape[1] > 1:
        mono *= np.float32(1.0 / data.shape[1])
    if rate == target:
        return mono
    import soxr

    return soxr.resample(mono, rate, target, quality="HQ").astype(np.float32)


def segments(mel: np.ndarray, opts: AudioOptions) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start frame, valid frames, [n_mels, segment_frames] padded segment) of a log-mel."""
    n = mel.shape[1]
    seg = opts.segment_frames
    for start in range(0, n, opts.hop):
        valid = min(seg, n - start)
        if valid < opts.min_frames:
            break
        piece = mel[:, start : start + valid]
        if valid < seg:
            piece = np.pad(piece, ((0, 0), (0, seg - valid)), constant_values=LOG_FLOOR)
        yield start, valid, piece
        if start + seg >= n:
            break


def read_audio(ctx: ReadContext, opts: AudioOptions) -> Iterator[dict[str, Any]]:
    """Records of one file (module docstring)."""
    if ctx.size == 0:
        raise ModalityError("empty file (0 bytes)")
    if ctx.size > ctx.max_file_bytes:
        raise ModalityError(f"file is {ctx.size} bytes, over --max-file-bytes {ctx.max_file_bytes}")
    data, rate = decode(ctx.local_path, ctx.max_file_bytes)
    if data.size == 0:
        raise ModalityError("no samples: the stream is empty")
    # max and min propagate NaN and inf: one pass each, no temporary (the checks cost more
    # than decoding otherwise); the full scan only runs for a file that fails
    peak = max(float(data.max()), -float(data.min()))
    if not np.isfinite(peak):
        bad = ~np.isfinite(data)
        first = int(np.argmax(bad.any(axis=1)))
        raise ModalityError(
            f"{int(bad.sum())} non-finite samples (NaN or inf), the first at {first / rate:.3f} s"
        )
    if peak <= SILENCE_PEAK:
        raise ModalityError("silent: every sample is within one 16-bit step of zero")
    wave = to_mono_rate(data, rate, opts.sample_rate)
    if num_frames(len(wave), opts.sample_rate) < opts.min_frames:
        raise ModalityError(
            f"too short: {len(data) / rate:.3f} s gives {num_frames(len(wave), opts.sample_rate)} "
            f"frames, under the {opts.min_frames} of one patch (min_frames)"
        )
    mel = log_mel(wave, opts.sample_rate, opts.n_mels)
    base = {
        "subject": bids_entities(ctx.source)["subject"],
        "label": label_of(ctx.source, opts),
        "sample_rate": opts.sample_rate,
        "source_sample_rate": int(rate),
        "source_channels": int(data.shape[1]),
        "source_seconds": len(data) / rate,
    }
    hop_s = 0.010
    for start, valid, piece in segments(mel, opts):
        yield {
            **base,
            "offset_s": round(start * hop_s, 6),
            "valid_frames": int(valid),
            "mel": piece.astype(np.float16),
        }


def is_audio(path: str) -> bool:
    return Path(path).name.lower().endswith(EXTENSIONS)
