"""One EEG recording -> fixed-channel windows: checks, channel mapping, filtering, windowing.

`read_recording` is the whole path a Ray worker runs: header-level checks (EDF/BDF sizes,
BrainVision triplets, the decoded size against `max_file_bytes`) before any sample is read, then
MNE reads only the picked channels, and numpy/MNE do the rest. Every refusal is a `ModalityError`
whose message a person understands. Imports numpy and pyarrow at top level and MNE inside
functions; never torch (workers stay light).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from modalities.base import ModalityError
from modalities.bids import bids_entities, participant_values
from modalities.eeg.channels import ChannelSet, match_key
from modalities.eeg.options import EegOptions

#: Suffixes MNE's `read_raw` dispatches on that a directory scan picks up. BrainVision is one
#: source per `.vhdr` (its `.vmrk`/`.eeg` are read through it); EEGLAB's `.fdt` likewise via `.set`.
EXTENSIONS = (".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".vhdr", ".set", ".cnt")

_SPLIT_FIF = re.compile(r"^(?P<base>.+)-(?P<n>\d+)(?P<ext>\.fif(?:\.gz)?)$", re.IGNORECASE)
_BIDS_SPLIT = re.compile(r"_split-(\d+)_", re.IGNORECASE)


def is_recording(path: str) -> bool:
    """Whether a directory scan should treat `path` as one recording.

    FIF files over 2 GB are split into `name.fif`, `name-1.fif`, ... (or BIDS `_split-01_`,
    `_split-02_`); MNE reads the continuation parts through the first, so only it is a source.
    """
    lower = path.lower()
    if not lower.endswith(EXTENSIONS):
        return False
    name = os.path.basename(path)
    split = _BIDS_SPLIT.search(name)
    if split and int(split.group(1)) > 1:
        return False
    m = _SPLIT_FIF.match(name)
    if m and os.path.exists(os.path.join(os.path.dirname(path), m["base"] + m["ext"])):
        return False
    return True


def record_schema(
    n_channels: int,
    n_samples: int,
    metadata: dict[str, str],
    participants_columns: tuple[str, ...] = (),
) -> pa.Schema:
    """Schema of the records: known from the channel count, window length and the requested
    participants.tsv columns alone (the fields are `RECORD_FIELDS`, then those columns)."""
    fields = [
        ("subject", pa.string()),
        ("session", pa.string()),
        ("task", pa.string()),
        ("run", pa.string()),
        ("label", pa.string()),
        ("window_start_s", pa.float64()),
        ("sfreq", pa.float64()),
        ("n_channels", pa.int32()),
        ("channels", pa.list_(pa.string())),
        ("source_channels", pa.list_(pa.string())),
        ("channel_mask", pa.fixed_shape_tensor(pa.uint8(), [n_channels])),
        ("positions", pa.fixed_shape_tensor(pa.float32(), [n_channels, 3])),
        ("dropped_channels", pa.list_(pa.string())),
        ("bad_channels", pa.list_(pa.string())),
        ("eeg", pa.fixed_shape_tensor(pa.float32(), [n_channels, n_samples])),
        *((c, pa.string()) for c in participants_columns),
    ]
    return pa.schema(fields, metadata=metadata)


# --------------------------------------------------------------------------------------------
# Header checks that MNE does not make (it warns and reads what is there)


def check_edf_header(path: str) -> None:
    """Refuse EDF/BDF files whose header is malformed or whose data records are cut short."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise ModalityError(f"corrupt EDF/BDF header: the file has {size} bytes, under 256")
        bdf = head[:8] == b"\xffBIOSEMI"
        if not bdf and head[:8] != b"0       ":
            raise ModalityError("corrupt EDF/BDF header: no EDF ('0') or BDF version field")
        fields = {"header bytes": head[184:192], "data records": head[236:244]}
        fields["signals"] = head[252:256]
        values = {}
        for field, raw in fields.items():
            text = raw.decode("ascii", "replace").strip()
            try:
                values[field] = int(text)
            except ValueError:
                raise ModalityError(
                    f"corrupt EDF/BDF header: field '{field}' is {text!r}, not a number"
                ) from None
        ns = values["signals"]
        if ns < 1 or values["header bytes"] != 256 * (ns + 1):
            raise ModalityError(
                f"corrupt EDF/BDF header: {ns} signals need a {256 * (ns + 1)}-byte header, "
                f"the header says {values['header bytes']}"
            )
        f.seek(256 + ns * 216)  # samples per data record, 8 ASCII bytes per signal
        spr_raw = f.read(8 * ns)
    if len(spr_raw) < 8 * ns:
        raise ModalityError("corrupt EDF/BDF header: the file ends inside the signal headers")
    try:
        spr = [int(spr_raw[i : i + 8].decode("ascii", "replace")) for i in range(0, 8 * ns, 8)]
    except ValueError:
        raise ModalityError("corrupt EDF/BDF header: non-numeric samples-per-record") from None
    record_bytes = sum(spr) * (3 if bdf else 2)
    n_records = values["data records"]
    if n_records == -1:  # a recording that was not closed: MNE uses the file size, so do we
        return
    expected = values["header bytes"] + n_records * record_bytes
    if size < expected:
        whole = (size - values["header bytes"]) // max(record_bytes, 1)
        raise ModalityError(
            f"truncated: the header declares {n_records} data records ({expected} bytes) but "
            f"the file has {size} bytes ({whole} complete records)"
        )


def check_brainvision(path: str) -> None:
    """Refuse a BrainVision header whose data (.eeg) or marker (.vmrk) file is missing."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModalityError(f"unreadable BrainVision header: {exc.strerror}") from None
    if "Brain Vision" not in text[:200] and "BrainVision" not in text[:200]:
        raise ModalityError("not a BrainVision header (.vhdr): no 'Brain Vision' identification")
    for key in ("DataFile", "MarkerFile"):
        m = re.search(rf"^{key}=(.+?)\s*$", text, re.MULTILINE)
        if m is None:
            if key == "DataFile":
                raise ModalityError("unreadable BrainVision triplet: the header names no DataFile")
            continue
        target = Path(path).parent / m.group(1)
        if not target.is_file():
            raise ModalityError(
                f"unreadable BrainVision triplet: the {key} {m.group(1)!r} named by the header "
                "is missing (a recording is the .vhdr with its .vmrk and .eeg)"
            )


# --------------------------------------------------------------------------------------------
# Opening a recording


@dataclass
class Mapping:
    """How a recording's channels fill the set: `picks[i]` (recording index) fills `slots[i]`."""

    picks: list[int]
    slots: list[int]
    recorded: list[str]  # recorded name of each slot, "" if absent
    dropped: list[str]  # EEG channels of the recording outside the set


def map_channels(names: list[str], types: list[str], cs: ChannelSet) -> Mapping:
    """Map EEG-typed channels of a recording onto the channel set by normalised name.

    EDF/BDF/GDF have no channel types (MNE types every channel EEG), so the name decides there:
    only names of the set (10-05 electrodes for the named sets) are taken, "ECG" or "Resp" not.
    """
    key_to_slot = {k: i for i, k in enumerate(cs.keys)}
    picks, slots, dropped = [], [], []
    recorded = [""] * len(cs.names)
    for i, (name, kind) in enumerate(zip(names, types, strict=True)):
        if kind != "eeg":
            continue
        slot = key_to_slot.get(match_key(name))
        if slot is None or recorded[slot]:  # a second channel for a filled slot (T3 and T7)
            dropped.append(name)
            continue
        picks.append(i)
        slots.append(slot)
        recorded[slot] = name
    return Mapping(picks, slots, recorded, dropped)


def _open_raw(path: str) -> Any:
    import mne

    lower = path.lower()
    if lower.endswith((".edf", ".bdf")):
        check_edf_header(path)
    elif lower.endswith(".vhdr"):
        check_brainvision(path)
    if os.path.getsize(path) == 0:
        raise ModalityError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MNE warns about what we check (or accept) ourselves
            return mne.io.read_raw(path, preload=False, verbose="error")
    except ModalityError:
        raise
    except FileNotFoundError as exc:
        raise ModalityError(f"a file the recording needs is missing: {exc}") from None
    except Exception as exc:  # MNE's readers raise many types for a bad file; all mean unreadable
        raise ModalityError(f"unreadable header ({type(exc).__name__}: {str(exc)[:200]})") from None


def _positions(raw: Any, mapping: Mapping, cs: ChannelSet) -> np.ndarray:
    """Per-slot xyz: the recording's own montage where it has one, else the standard position."""
    pos = cs.positions.copy()
    for pick, slot in zip(mapping.picks, mapping.slots, strict=True):
        loc = np.asarray(raw.info["chs"][pick]["loc"][:3], dtype=np.float64)
        # Readers without positions leave NaN or zeros; no electrode sits at the head's origin.
        if np.all(np.isfinite(loc)) and np.linalg.norm(loc) > 1e-3:
            pos[slot] = loc
    return pos.astype(np.float32)


def _bad_spans(raw: Any) -> list[tuple[float, float]]:
    """(start, stop) seconds from the first sample of annotations whose description starts 'bad'."""
    ann = raw.annotations
    offset = raw.first_time if ann.orig_time is not None else 0.0
    spans = []
    for onset, duration, desc in zip(ann.onset, ann.duration, ann.description, strict=True):
        if str(desc).strip().lower().startswith("bad"):
            start = float(onset) - offset
            spans.append((start, start + max(float(duration), 0.0)))
    return spans


def _resample(x: np.ndarray, native: float, target: float) -> np.ndarray:
    import mne

    if abs(native - target) < 1e-9 * target:
        return x
    ratio = Fraction(target / native).limit_denominator(1000)
    # Polyphase: a rational-ratio FIR, several times faster than MNE's default FFT resampling on
    # hour-long recordings, and it does not assume the signal is periodic.
    return mne.filter.resample(
        x, up=ratio.numerator, down=ratio.denominator, method="polyphase", verbose="error"
    )


def preprocess(x: np.ndarray, native: float, opts: EegOptions) -> np.ndarray:
    """Notch (at the native rate), resample to `opts.sfreq`, band-pass: [C, n] in, [C, m] out."""
    import mne

    notch = [f for f in opts.notch if f < min(native, opts.sfreq) / 2]
    if notch:  # lines above the output Nyquist are removed by resampling's low-pass anyway
        x = mne.filter.notch_filter(x, native, notch, verbose="error")
    x = _resample(x, native, opts.sfreq)
    if opts.high_pass is not None or opts.low_pass is not None:
        x = mne.filter.filter_data(
            x, opts.sfreq, opts.high_pass, opts.low_pass, copy=False, verbose="error"
        )
    return x


def _span_reduce(values: np.ndarray, starts: np.ndarray, stops: np.ndarray, op) -> np.ndarray:
    """op (np.maximum / np.minimum / np.add) over [start, stop) spans: [C, n] -> [C, windows]."""
    return np.stack(
        [op.reduce(values[:, a:b], axis=1) for a, b in zip(starts, stops, strict=True)], 1
    )


def read_recording(
    path: str, source: str, max_file_bytes: int, opts: EegOptions, cs: ChannelSet
) -> Iterator[dict[str, Any]]:
    """Yield the records of one recording (see the module docstring and docs/eeg.md)."""
    raw = _open_raw(path)
    names = list(raw.ch_names)
    types = raw.get_channel_types()
    mapping = map_channels(names, types, cs)
    if not mapping.picks:
        eeg = [n for n, t in zip(names, types, strict=True) if t == "eeg"]
        if not eeg:
            kinds = ", ".join(sorted(set(types))) or "none"
            raise ModalityError(f"no EEG channels: the recording holds only {kinds} channels")
        shown = ", ".join(eeg[:8]) + (", ..." if len(eeg) > 8 else "")
        raise ModalityError(
            f"no EEG channels of the channel set: none of the {len(eeg)} channels ({shown}) "
            f"is one of {', '.join(cs.names[:6])}{', ...' if len(cs.names) > 6 else ''}; "
            "choose channels with --channels"
        )
    if len(mapping.picks) < opts.min_channels:
        raise ModalityError(
            f"only {len(mapping.picks)} channels of the set are present "
            f"(--min-channels {opts.min_channels})"
        )
    native = float(raw.info["sfreq"])
    n_times = int(raw.n_times)
    need = len(mapping.picks) * n_times * 8
    if need > max_file_bytes:
        raise ModalityError(
            f"{len(mapping.picks)} channels x {n_times} samples would decode to {need} bytes, "
            f"over --max-file-bytes {max_file_bytes}"
        )
    duration = n_times / native
    if duration < opts.window_s:
        raise ModalityError(
            f"shorter than one window: {duration:.2f} s of data, a window is {opts.window_s:g} s"
        )
    positions = _positions(raw, mapping, cs)
    spans = _bad_spans(raw)
    try:
        x = raw.get_data(picks=mapping.picks)  # volts, float64 [C, n]
    except Exception as exc:  # noqa: BLE001 - a data block MNE cannot decode is a bad file
        raise ModalityError(f"unreadable data ({type(exc).__name__}: {str(exc)[:200]})") from None
    del raw
    x *= 1e6  # volts -> microvolts
    nonfinite = ~np.isfinite(x)
    if nonfinite.any():
        x[nonfinite] = 0.0  # filters would spread NaN over the whole channel; windows are dropped
    yield from _windows(x, nonfinite, native, spans, mapping, positions, source, opts, cs)


def _windows(
    x: np.ndarray,
    nonfinite: np.ndarray,
    native: float,
    spans: list[tuple[float, float]],
    mapping: Mapping,
    positions: np.ndarray,
    source: str,
    opts: EegOptions,
    cs: ChannelSet,
) -> Iterator[dict[str, Any]]:
    n_win = int((x.shape[1] / native - opts.window_s) // opts.hop_s) + 1
    starts_s = np.arange(n_win) * opts.hop_s
    # Window spans at the native rate, for the flat / non-finite checks on the unfiltered data
    # (a high-pass turns a flat channel with an offset into a tiny transient, not exactly flat).
    a = np.round(starts_s * native).astype(np.int64)
    b = np.minimum(np.round((starts_s + opts.window_s) * native).astype(np.int64), x.shape[1])
    ptp = _span_reduce(x, a, b, np.maximum) - _span_reduce(x, a, b, np.minimum)
    bad = ptp < opts.flat_uv
    if nonfinite.any():
        bad |= _span_reduce(nonfinite, a, b, np.logical_or)
    annotated = np.array(
        [any(s < t + opts.window_s and (e > t or s == e == t) for s, e in spans) for t in starts_s],
        dtype=bool,
    )
    if bad.all():
        raise ModalityError(
            f"all {len(mapping.picks)} EEG channels are flat (peak-to-peak < {opts.flat_uv:g} uV) "
            "or non-finite in every window"
        )
    y = preprocess(x, native, opts).astype(np.float32)
    del x
    entities = bids_entities(source)
    label = entities["task"] if opts.label_from == "task" else None
    extra = participant_values(source, entities["subject"], opts.participants_columns)
    w, hop = opts.window_samples, opts.hop_samples
    counts = {"annotated": 0, "bad": 0}
    emitted = 0
    for k in range(n_win):
        if annotated[k]:
            counts["annotated"] += 1
            continue
        if bad[:, k].any() and (opts.bad_channels == "drop-window" or bad[:, k].all()):
            counts["bad"] += 1
            continue
        lo = k * hop
        if lo + w > y.shape[1]:
            break  # resampling rounded the last window away
        eeg = np.zeros((len(cs.names), w), dtype=np.float32)
        mask = np.zeros(len(cs.names), dtype=np.uint8)
        bad_names = []
        for row, slot in enumerate(mapping.slots):
            if bad[row, k]:
                bad_names.append(cs.names[slot])
                continue
            eeg[slot] = y[row, lo : lo + w]
            mask[slot] = 1
        emitted += 1
        yield {
            **entities,
            "label": label,
            "window_start_s": float(starts_s[k]),
            "sfreq": float(opts.sfreq),
            "n_channels": int(mask.sum()),
            "channels": list(cs.names),
            "source_channels": mapping.recorded,
            "channel_mask": mask,
            "positions": positions,
            "dropped_channels": mapping.dropped,
            "bad_channels": bad_names,
            "eeg": eeg,
            **extra,
        }
    if emitted == 0:
        why = []
        if counts["annotated"]:
            why.append(f"{counts['annotated']} overlap annotations starting with 'bad'")
        if counts["bad"]:
            policy = "any" if opts.bad_channels == "drop-window" else "every"
            why.append(f"{counts['bad']} have {policy} channel flat or non-finite")
        raise ModalityError(f"no usable window: of {n_win} windows, " + "; ".join(why))
