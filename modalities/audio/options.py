"""Audio ingest options (pure Python: the schema follows from these alone, before any file is
opened and without importing soundfile or librosa)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modalities.labels import LABEL_SOURCES
from modalities.options import BlockSpec, check_range

#: A-JEPA / AudioMAE: 16 kHz mono, 128 mel bins, 10 ms hop, 1024-frame (10.24 s) segments.
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_N_MELS = 128
DEFAULT_SEGMENT_FRAMES = 1024
#: a file whose every sample is within this of zero is silent (below one 16-bit step)
SILENCE_PEAK = 1.0 / 32768.0

#: The fields of every audio record (modalities/audio/reader.py's schema).
RECORD_FIELDS = (
    "subject", "label", "offset_s", "valid_frames", "sample_rate", "source_sample_rate",
    "source_channels", "source_seconds", "mel",
)  # fmt: skip


def _check_int(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class AudioOptions:
    """Preprocessing options of the audio reader (JSON-serialisable; recorded in the manifest).

    sample_rate: every file is mixed to mono and resampled (soxr, high quality) to this rate.
    n_mels: mel bins of the Kaldi-compatible log-mel (modalities/audio/fbank.py).
    segment_frames: frames (10 ms each) per record; hop_frames: frames between record starts
        (default: the segment, no overlap). The last segment is padded to full length with the
        log floor (digital silence) and `valid_frames` says how many frames are real.
    min_frames: a tail segment with fewer real frames than this is dropped (a file shorter than
        this is refused: too short for one patch).
    labels: "none", "folder" (the file's parent folder names its class, Speech Commands style)
        or "csv" (`labels_csv`, a CSV with a header: a path column and `label_column`; see
        modalities/labels.py: bare file names (ESC-50) and relative paths both work; files
        without a row get no label).
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    n_mels: int = DEFAULT_N_MELS
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    hop_frames: int | None = None
    min_frames: int = 16
    labels: str = "none"
    labels_csv: str | None = None
    label_column: str = "label"

    def __post_init__(self) -> None:
        _check_int("sample_rate", self.sample_rate, 1000, 384000)
        _check_int("n_mels", self.n_mels, 1, 512)
        _check_int("segment_frames", self.segment_frames, 1, 1 << 20)
        if self.hop_frames is not None:
            _check_int("hop_frames", self.hop_frames, 1, 1 << 20)
        _check_int("min_frames", self.min_frames, 1, self.segment_frames)
        if self.labels not in LABEL_SOURCES:
            choices = ", ".join(LABEL_SOURCES)
            raise ValueError(f"labels: expected one of {choices}, got {self.labels!r}")
        if (self.labels == "csv") != (self.labels_csv is not None):
            raise ValueError("labels: 'csv' goes with a labels CSV (--labels-csv FILE), only it")

    @property
    def hop(self) -> int:
        return self.hop_frames or self.segment_frames


MASKINGS = ("curriculum", "block", "tf")


@dataclass(frozen=True)
class AJepaMethod:
    """Method options of A-JEPA (module docstring).

    patch_freq / patch_time: mel bins and frames per patch (16 x 16).
    masking: "curriculum" (blocks -> time-frequency masks by `curriculum`), "block" (random
        blocks only) or "tf" (time-frequency masks only).
    masks / context_scale: the random-block masks (I-JEPA's: 4 targets of 15-20%, context block
        85-100% minus them).
    time_strips / strip_scale: time strips per sample and each one's share of the time patches;
    freq_bands / band_scale: frequency bands per sample and each one's share of the frequency
        patches.
    curriculum: [p at the start, p at the end] of drawing a time-frequency mask;
    curriculum_steps: [first, last] batch of the ramp (set the last to train.steps).
    min_context: a draw is redone while the context keeps fewer than this share of the tokens.
    """

    patch_freq: int = 16
    patch_time: int = 16
    masking: str = "curriculum"
    masks: tuple[BlockSpec, ...] = field(default_factory=lambda: (BlockSpec(),))
    context_scale: tuple[float, float] = (0.85, 1.0)
    time_strips: int = 2
    strip_scale: tuple[float, float] = (0.05, 0.15)
    freq_bands: int = 1
    band_scale: tuple[float, float] = (0.125, 0.25)
    curriculum: tuple[float, float] = (0.0, 1.0)
    curriculum_steps: tuple[int, int] = (0, 10000)
    min_context: float = 0.1

    def __post_init__(self) -> None:
        for name in ("patch_freq", "patch_time"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.masking not in MASKINGS:
            raise ValueError(
                f"masking: expected one of {', '.join(MASKINGS)}, got {self.masking!r}"
            )
        if not self.masks:
            raise ValueError("masks: expected at least one block spec, got []")
        check_range("context_scale", self.context_scale)
        check_range("strip_scale", self.strip_scale)
        check_range("band_scale", self.band_scale)
        if self.time_strips < 0 or self.freq_bands < 0 or self.time_strips + self.freq_bands < 1:
            raise ValueError(
                f"time_strips / freq_bands: need >= 0 each and one target at least, got "
                f"{self.time_strips} / {self.freq_bands}"
            )
        lo, hi = self.curriculum
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise ValueError(f"curriculum: probabilities in [0, 1], got {list(self.curriculum)}")
        a, b = self.curriculum_steps
        if not 0 <= a <= b:
            raise ValueError(
                f"curriculum_steps: expected [first, last] with 0 <= first <= last, "
                f"got {list(self.curriculum_steps)}"
            )
        if not 0 <= self.min_context < 1:
            raise ValueError(f"min_context: must be in [0, 1), got {self.min_context}")
