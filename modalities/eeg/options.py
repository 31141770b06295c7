"""EEG ingest options and the named channel sets.

Everything here is pure Python + numpy: the schema is computed from these options alone, before
any recording is opened, and without importing MNE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalities.options import check_range, participants_problems

#: S-JEPA resamples every recording to 128 Hz.
DEFAULT_SFREQ = 128.0
#: Seconds per record (window); S-JEPA's tokens are 1 s per channel, so this is 16 time tokens.
DEFAULT_WINDOW_S = 16.0

#: The 19 electrodes of the international 10-20 system, in modern (10-10) names.
CHANNELS_10_20 = (
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz",
    "C4", "T8", "P7", "P3", "Pz", "P4", "P8", "O1", "O2",
)  # fmt: skip
#: A 64-electrode 10-10 layout (the BioSemi / Easycap 64 positions by 10-10 name).
CHANNELS_10_10 = (
    "Fp1", "AF7", "AF3", "F1", "F3", "F5", "F7", "FT7", "FC5", "FC3", "FC1", "C1", "C3", "C5",
    "T7", "TP7", "CP5", "CP3", "CP1", "P1", "P3", "P5", "P7", "P9", "PO7", "PO3", "O1", "Iz",
    "Oz", "POz", "Pz", "CPz", "Fpz", "Fp2", "AF8", "AF4", "AFz", "Fz", "F2", "F4", "F6", "F8",
    "FT8", "FC6", "FC4", "FC2", "FCz", "Cz", "C2", "C4", "C6", "T8", "TP8", "CP6", "CP4", "CP2",
    "P2", "P4", "P6", "P8", "P10", "PO8", "PO4", "O2",
)  # fmt: skip
CHANNEL_SETS: dict[str, tuple[str, ...]] = {"10-20": CHANNELS_10_20, "10-10": CHANNELS_10_10}

#: The fields of every EEG record (modalities/eeg/reader.py's schema), which participants
#: columns may not shadow.
RECORD_FIELDS = (
    "subject", "session", "task", "run", "label", "window_start_s", "sfreq", "n_channels",
    "channels", "source_channels", "channel_mask", "positions", "dropped_channels",
    "bad_channels", "eeg",
)  # fmt: skip
BAD_POLICIES = ("drop-channel", "drop-window")
UNKNOWN_POLICIES = ("keep", "drop")
LABEL_SOURCES = ("task", "none")


@dataclass(frozen=True)
class EegOptions:
    """Preprocessing options of the EEG reader (JSON-serialisable; recorded in the manifest).

    channels: the fixed channel set of every record: a named set (`CHANNEL_SETS`) or a tuple of
        names. Names are matched case-insensitively after normalisation; a custom name that is no
        10-05 electrode has no standard position (see `unknown_channels`).
    unknown_channels: "keep" such channels (position NaN) or "drop" them from the set.
    sfreq: sampling rate of every record (Hz); recordings at another rate are resampled.
    window_s / hop_s: record length and the step between record starts, in seconds.
    high_pass / low_pass: band edges (Hz, FIR); notch: line frequencies to remove (Hz).
    bad_channels: what a flat or non-finite channel in a window does: "drop-channel" zeroes it and
        clears its mask bit in that record; "drop-window" skips the window.
    flat_uv: a channel whose peak-to-peak in a window is below this (microvolts) is flat.
    min_channels: refuse recordings with fewer channels of the set present.
    label_from: what fills the `label` column: "task" (BIDS task entity) or "none".
    participants_columns: columns of the BIDS participants.tsv (found in a folder above the
        recording) copied into every record as strings, e.g. a group label for probes.
    """

    channels: str | tuple[str, ...] = "10-20"
    unknown_channels: str = "keep"
    sfreq: float = DEFAULT_SFREQ
    window_s: float = DEFAULT_WINDOW_S
    hop_s: float | None = None
    high_pass: float | None = 0.5
    low_pass: float | None = None
    notch: tuple[float, ...] = ()
    bad_channels: str = "drop-channel"
    flat_uv: float = 1.0
    min_channels: int = 1
    label_from: str = "task"
    participants_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # JSON round-trips (manifest, Ray task arguments) turn tuples into lists.
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "notch", tuple(float(f) for f in self.notch))
        object.__setattr__(self, "participants_columns", tuple(self.participants_columns))
        if self.hop_s is None:
            object.__setattr__(self, "hop_s", self.window_s)
        problems = participants_problems(self.participants_columns, RECORD_FIELDS)
        if isinstance(self.channels, str):
            if self.channels not in CHANNEL_SETS:
                problems.append(
                    f"unknown channel set {self.channels!r}; named sets: "
                    f"{', '.join(CHANNEL_SETS)}, or pass a comma-separated list of names"
                )
        elif not self.channels or not all(isinstance(c, str) and c for c in self.channels):
            problems.append("channels must be a named set or a non-empty list of names")
        if self.unknown_channels not in UNKNOWN_POLICIES:
            problems.append(f"unknown_channels must be one of {UNKNOWN_POLICIES}")
        if self.bad_channels not in BAD_POLICIES:
            problems.append(f"bad_channels must be one of {BAD_POLICIES}")
        if self.label_from not in LABEL_SOURCES:
            problems.append(f"label_from must be one of {LABEL_SOURCES}")
        if not (np.isfinite(self.sfreq) and self.sfreq > 0 and float(self.sfreq).is_integer()):
            # Tokens are one second of samples, so a second must be a whole number of samples.
            problems.append(f"sfreq must be a positive whole number of Hz, got {self.sfreq!r}")
        for name in ("window_s", "hop_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0 and float(value).is_integer()):
                problems.append(f"{name} must be a positive whole number of seconds, got {value!r}")
        for name in ("high_pass", "low_pass"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number of Hz, got {value!r}")
        nyquist = self.sfreq / 2 if np.isfinite(self.sfreq) else np.inf
        if self.low_pass is not None and self.low_pass >= nyquist:
            problems.append(
                f"low_pass {self.low_pass} Hz must be below the output Nyquist ({nyquist:g} Hz)"
            )
        if self.high_pass is not None and self.low_pass is not None:
            if not self.high_pass < self.low_pass:
                problems.append(f"high_pass ({self.high_pass}) must be below low_pass")
        if any(not (np.isfinite(f) and f > 0) for f in self.notch):
            problems.append(f"notch frequencies must be positive, got {self.notch!r}")
        if not (np.isfinite(self.flat_uv) and self.flat_uv >= 0):
            problems.append(f"flat_uv must be >= 0, got {self.flat_uv!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            problems.append(f"min_channels must be a positive integer, got {self.min_channels!r}")
        if problems:
            raise ValueError("invalid EEG options: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sfreq))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sfreq))

    def requested_channels(self) -> tuple[str, ...]:
        """The channel names as asked for (a named set expanded), before normalisation."""
        if isinstance(self.channels, str):
            return CHANNEL_SETS[self.channels]
        return tuple(self.channels)


# --------------------------------------------------------------------------------------------
# S-JEPA's method options (the run config's `modality:` section)


#: the feature encoders of `SJepaMethod.features`
FEATURE_ENCODERS = ("segment", "continuous", "spectrum")
#: `SJepaMethod.spectrum_centering`: none, or each channel's mean over the window taken out
SPECTRUM_CENTERINGS = ("none", "channel")
#: S-JEPA's continuous conv stack (braindecode's SignalJEPA default): (channels, kernel, stride)
SJEPA_CONV_LAYERS = ((8, 32, 8), (16, 2, 2), (32, 2, 2), (64, 2, 2), (64, 2, 2))


def conv_span(layers: tuple[tuple[int, int, int], ...]) -> tuple[int, int]:
    """(receptive field, stride) in input samples of a stack of unpadded 1-D convolutions."""
    field, stride = 1, 1
    for _, kernel, step in layers:
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


@dataclass(frozen=True)
class SpatialSpec:
    """One group of S-JEPA target blocks (`modality.masks[i]`).

    num: blocks in the group. channel_scale: each block masks the round(U(channel_scale) *
    channels) electrodes nearest a random centre electrode, or, with `radius` (metres: the
    paper's sphere), every electrode within that distance of it. time_scale: the block spans a
    contiguous run of round(U(time_scale) * seconds) seconds (1.0: the whole window, S-JEPA's).
    """

    num: int = 1
    channel_scale: tuple[float, float] = (0.15, 0.3)
    time_scale: tuple[float, float] = (1.0, 1.0)
    radius: float | None = None

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"num: must be >= 1, got {self.num}")
        check_range("channel_scale", self.channel_scale)
        check_range("time_scale", self.time_scale)
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius: must be positive metres, got {self.radius}")


@dataclass(frozen=True)
class SJepaMethod:
    """S-JEPA's method options: the target block groups and the context's floor.

    masks: the groups of spatial target blocks. min_context: a draw is redone (up to
    `max_tries` times) while the context keeps fewer than this share of the tokens.
    features: the per-channel feature encoder. "segment": a small conv stack over each 1-s
    segment alone (128 samples). "continuous": S-JEPA's (braindecode's SignalJEPA) conv stack
    over the continuous signal, 5 layers (8x32/8, 16x2/2, 32x2/2, 64x2/2, 64x2/2 channels x
    kernel / stride): receptive field 152 samples (1.1875 s at 128 Hz), stride 128 (1 s). It is
    computed per token, each token holding its second plus the next 24 samples, which equals the
    stack run along the whole channel (no padding: a window of S seconds gives S - 1 tokens per
    channel, as braindecode's does). Needs 128 Hz records (the ingest's default). "spectrum":
    each 1-s token's log power spectrum (Hann window, 1 Hz bins), embedded linearly: not
    S-JEPA's, phase-invariant from the start (docs/eeg.md).
    spectrum_centering: with features "spectrum", "channel" subtracts each channel's mean log
    spectrum over the window from its tokens (takes out a record's steady traits: background
    power, a steady alpha); "none" (default) keeps them.
    conv_widths: the channels of the segment encoder's three conv layers (default 32, 64, 128;
    the conv stack is most of a CPU step, and narrower ones are cheaper but keep less of a
    token's band power at init: docs/eeg.md). The continuous stack's widths are S-JEPA's.
    """

    # What a run that set no masks drew before the modality owned its options (the engine's
    # I-JEPA mask defaults read as 4 blocks of 15-20% of the channels): unchanged.
    masks: tuple[SpatialSpec, ...] = (SpatialSpec(num=4, channel_scale=(0.15, 0.2)),)
    features: str = "segment"
    spectrum_centering: str = "none"
    conv_widths: tuple[int, ...] = (32, 64, 128)
    min_context: float = 0.1
    max_tries: int = 100

    def __post_init__(self) -> None:
        if not self.masks:
            raise ValueError("masks: expected at least one block spec, got []")
        if not 0 <= self.min_context < 1:
            raise ValueError(f"min_context: must be in [0, 1), got {self.min_context}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries: must be >= 1, got {self.max_tries}")
        # Each layer's GroupNorm splits its channels into min(8, width) groups.
        if (
            len(self.conv_widths) != 3
            or min(self.conv_widths) < 1
            or any(w > 8 and w % 8 for w in self.conv_widths)
        ):
            raise ValueError(
                "conv_widths: expected three positive layer widths, each at most 8 or a "
                f"multiple of 8, got {list(self.conv_widths)}"
            )
        if self.features not in FEATURE_ENCODERS:
            raise ValueError(
                f"features: expected one of {', '.join(FEATURE_ENCODERS)}, got {self.features!r}"
            )
        if self.spectrum_centering not in SPECTRUM_CENTERINGS:
            raise ValueError(
                f"spectrum_centering: expected one of {', '.join(SPECTRUM_CENTERINGS)}, got "
                f"{self.spectrum_centering!r}"
            )
        if self.spectrum_centering != "none" and self.features != "spectrum":
            raise ValueError(
                f"spectrum_centering: {self.spectrum_centering!r} needs features: spectrum "
                f"(got features: {self.features})"
            )
