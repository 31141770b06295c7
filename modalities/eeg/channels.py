"""Channel names and electrode positions: normalisation, the 10-05 position table, channel sets.

A recording names its electrodes in many ways ("EEG FP1-REF", "T3", "fp1"); `canonical_name` maps
them to the spelling of MNE's standard_1005 montage ("Fp1", "T7"). Positions come from
`standard_1005.tsv` (written by make_positions.py, head frame, metres), so neither the schema nor
the reader needs MNE to know where an electrode is. Imports numpy only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalities.eeg.options import EegOptions

POSITION_TABLE = Path(__file__).resolve().parent / "standard_1005.tsv"

#: Old 10-20 names (Jasper 1958) -> the 10-10 names of the same positions (TUH and many clinical
#: EDFs still use T3/T4/T5/T6).
OLD_NAMES = {"t3": "T7", "t4": "T8", "t5": "P7", "t6": "P8"}

# Reference / type decorations clinical systems add around an electrode name: "EEG Fp1-REF",
# "EEG T3-LE", "Fp1-A1", "FP1:AVG". A bipolar "Fp1-F7" is left alone (it is not one electrode).
_PREFIX = re.compile(r"^eeg[\s_:-]*", re.IGNORECASE)
_SUFFIX = re.compile(
    r"[\s_:-]+(?:ref|le|re|ar|avg|av|car|a1|a2|m1|m2|a1a2|m1m2|lm|rm|cz)$", re.IGNORECASE
)


def strip_decorations(name: str) -> str:
    """A channel name without reference/type decorations and surrounding space."""
    return _SUFFIX.sub("", _PREFIX.sub("", name.strip())).strip()


@functools.lru_cache(maxsize=1)
def standard_positions() -> dict[str, np.ndarray]:
    """Electrode name (montage spelling) -> xyz in metres, MNE head frame."""
    out: dict[str, np.ndarray] = {}
    for line in POSITION_TABLE.read_text().splitlines():
        if not line or line.startswith(("#", "name\t")):
            continue
        name, x, y, z = line.split("\t")
        out[name] = np.array([float(x), float(y), float(z)], dtype=np.float32)
    return out


@functools.lru_cache(maxsize=1)
def _spellings() -> dict[str, str]:
    return {name.lower(): name for name in standard_positions()}


def canonical_name(name: str) -> str | None:
    """The standard_1005 spelling of a recorded channel name, or None if it is no 10-05 electrode.

    Tries the name as recorded, then without decorations; old 10-20 names map to their 10-10
    equivalents (T3 -> T7), so a T3 recording and a T7 recording fill the same slot.
    """
    spellings = _spellings()
    for candidate in (name.strip(), strip_decorations(name)):
        low = candidate.lower()
        if low in OLD_NAMES:
            return OLD_NAMES[low]
        if low in spellings:
            return spellings[low]
    return None


def match_key(name: str) -> str:
    """The key a recorded channel is matched to a slot of the channel set by."""
    canonical = canonical_name(name)
    return (canonical or strip_decorations(name)).lower()


@dataclass(frozen=True)
class ChannelSet:
    """The fixed channels of every record: names, standard positions (NaN if unknown)."""

    names: tuple[str, ...]
    positions: np.ndarray  # float32 [C, 3], metres; NaN rows for channels with no 10-05 position
    unknown: tuple[str, ...]  # names with no standard position
    dropped: tuple[str, ...]  # asked for but dropped (unknown_channels="drop")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(match_key(n) for n in self.names)


def resolve_channels(opts: EegOptions) -> ChannelSet:
    """The channel set the options describe (pure function of the options)."""
    return _resolve_cached(opts.requested_channels(), opts.unknown_channels)


@functools.lru_cache(maxsize=8)
def _resolve_cached(requested: tuple[str, ...], unknown_policy: str) -> ChannelSet:
    table = standard_positions()
    names: list[str] = []
    unknown: list[str] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for raw in requested:
        canonical = canonical_name(raw)
        name = canonical or strip_decorations(raw)
        if not name:
            raise ValueError(f"invalid EEG options: empty channel name in {requested!r}")
        if name.lower() in seen:
            raise ValueError(f"invalid EEG options: channel {name!r} is listed twice")
        seen.add(name.lower())
        if canonical is None:
            if unknown_policy == "drop":
                dropped.append(name)
                continue
            unknown.append(name)
        names.append(name)
    if not names:
        raise ValueError(
            "invalid EEG options: no channel of the set has a standard 10-05 position and "
            "--unknown-channels drop removed them all"
        )
    nan = np.full(3, np.nan, dtype=np.float32)
    positions = np.stack([table.get(n, nan) for n in names]).astype(np.float32)
    return ChannelSet(tuple(names), positions, tuple(unknown), tuple(dropped))
