"""S-JEPA for EEG (Guetschel et al. 2024): tokens, embedder and spatial block masking.

- `tokenize_record`: a record's present channels cut into 1-second segments (one token per
  channel per second; at S-JEPA's 128 Hz a token is 128 samples), robust-scaled per channel from
  the dataset statistics. coords [N, 6] int64 = (channel index, second, x, y, z, has_position)
  with xyz in micrometres, so the masker and embedder see each token's electrode position even
  when a recording brings its own montage.
- `EegEmbedder`: a per-channel 1-D convolutional feature encoder over each token's samples, plus a
  channel embedding that starts as a 3-D sin-cos encoding of the electrode position and is then
  learned (a Linear initialised to the identity), plus a fixed sin-cos encoding of the second.
- `SpatialBlockMasker`: each target block is the k nearest electrodes to a random electrode (or
  all within a radius) over a contiguous span of seconds; the context is everything else.

Imports numpy and torch (loaded lazily by the modality's hooks, never by Ray workers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalities.eeg.options import (
    FEATURE_ENCODERS,
    SJEPA_CONV_LAYERS,
    SJepaMethod,
    SpatialSpec,
    conv_span,
)
from modalities.grid import sincos_1d

#: coords columns
CHANNEL, SECOND, X, Y, Z, HAS_POSITION = range(6)
#: positions travel in coords as integer micrometres
UM_PER_M = 1e6


def token_overlap(opts: SJepaMethod, sfreq: float) -> int:
    """Samples past its second each token holds for the feature encoder `opts.features`."""
    if opts.features != "continuous":
        return 0
    field, stride = conv_span(SJEPA_CONV_LAYERS)
    if round(float(sfreq)) != stride:
        raise ValueError(
            f"modality.features=continuous is S-JEPA's conv stack for {stride} Hz records (stride "
            f"1 s); these are {sfreq:g} Hz (ingest with --sfreq {stride})"
        )
    return field - stride


def tokenize_record(
    record: dict[str, Any], stats: dict[str, Any], overlap: int = 0
) -> dict[str, np.ndarray]:
    """tokens float32 [C_present * S, sfreq + overlap] and coords int64 [C_present * S, 6].

    Channels absent from the recording (mask 0) give no tokens. With `channel_median` /
    `channel_iqr` in `stats`, each channel is scaled as (x - median) / IQR. `overlap` > 0: each
    token is its second plus the next `overlap` samples (what a conv stack whose receptive field
    is sfreq + overlap sees at that second), and only the S = (samples - sfreq - overlap) //
    sfreq + 1 seconds that have those samples give tokens.
    """
    eeg = np.asarray(record["eeg"], dtype=np.float32)
    mask = np.asarray(record["channel_mask"]).astype(bool)
    positions = np.asarray(record["positions"], dtype=np.float64)
    seg = int(round(float(record["sfreq"])))
    n_ch, n_samples = eeg.shape
    if seg < 1 or n_samples % seg:
        raise ValueError(
            f"EEG window of {n_samples} samples is not a whole number of seconds at {seg} Hz"
        )
    if stats.get("channels") is not None and list(stats["channels"]) != list(record["channels"]):
        raise ValueError(
            "the dataset statistics describe other channels than the record: "
            f"{stats['channels'][:4]}... vs {list(record['channels'])[:4]}..."
        )
    present = np.flatnonzero(mask)
    if present.size == 0:
        raise ValueError("EEG record has no present channel (channel_mask is all 0)")
    x = eeg[present]
    if "channel_median" in stats and "channel_iqr" in stats:
        med = np.asarray(stats["channel_median"], dtype=np.float32)[present, None]
        iqr = np.asarray(stats["channel_iqr"], dtype=np.float32)[present, None]
        x = (x - med) / np.where(iqr > 0, iqr, 1.0)
    if overlap:
        n_sec = (n_samples - seg - overlap) // seg + 1
        if n_sec < 1:
            raise ValueError(f"EEG window of {n_samples} samples is shorter than one token")
        view = np.lib.stride_tricks.sliding_window_view(x, seg + overlap, axis=1)[:, ::seg]
        tokens = np.ascontiguousarray(view[:, :n_sec].reshape(-1, seg + overlap), np.float32)
    else:
        n_sec = n_samples // seg
        tokens = np.ascontiguousarray(x.reshape(present.size * n_sec, seg), dtype=np.float32)
    pos = positions[present]
    has = np.isfinite(pos).all(axis=1)
    pos_um = np.where(has[:, None], np.round(np.nan_to_num(pos) * UM_PER_M), 0).astype(np.int64)
    coords = np.zeros((present.size, n_sec, 6), dtype=np.int64)
    coords[..., CHANNEL] = present[:, None]
    coords[..., SECOND] = np.arange(n_sec)[None, :]
    coords[..., X : Z + 1] = pos_um[:, None, :]
    coords[..., HAS_POSITION] = has[:, None]
    return {"tokens": tokens, "coords": coords.reshape(-1, 6)}


#: added to each bin's power (robust-scaled units squared) before the log
SPECTRUM_EPS = 1e-4


def log_spectra(tokens: np.ndarray) -> np.ndarray:
    """[..., n] samples -> [..., n // 2 + 1] float32: the log power of each bin of a
    Hann-windowed FFT (1 Hz bins for 1-s tokens), normalised by the window's energy."""
    window = np.hanning(tokens.shape[-1])
    spec = np.fft.rfft(np.asarray(tokens, dtype=np.float64) * window, axis=-1)
    power = (spec.real**2 + spec.imag**2) / np.square(window).sum()
    return np.log(power + SPECTRUM_EPS).astype(np.float32)


def spectrum_tokens(tokens: np.ndarray, coords: np.ndarray, centering: str) -> np.ndarray:
    """`tokenize_record`'s 1-s tokens -> their log spectra (`log_spectra`). centering
    "channel": each channel's spectra minus their mean over the window's seconds, which takes
    out what stays the same through a record (the channel's background power, a steady rhythm
    such as the eyes-closed alpha) and keeps how each second departs from it."""
    spectra = log_spectra(tokens)
    if centering == "channel":
        channels, inverse = np.unique(coords[:, CHANNEL], return_inverse=True)
        sums = np.zeros((channels.size, spectra.shape[1]))
        np.add.at(sums, inverse, spectra)
        counts = np.bincount(inverse, minlength=channels.size)[:, None]
        spectra = (spectra - (sums / counts)[inverse]).astype(np.float32)
    elif centering != "none":
        raise ValueError(f"spectrum centering must be 'none' or 'channel', got {centering!r}")
    return spectra


# --------------------------------------------------------------------------------------------
# Embedder


def xyz_sincos(xyz_m: torch.Tensor, dim: int) -> torch.Tensor:
    """3-D sin-cos encoding of positions in metres [..., 3] -> [..., dim] (zero-padded).

    Each axis gets dim // 6 frequencies spaced geometrically from a 40 cm to a 1 cm period: a head
    is ~20 cm across and 10-10 electrodes are ~3 cm apart, so both scales are resolved.
    """
    n = max(1, dim // 6)
    periods = torch.logspace(math.log10(0.4), math.log10(0.01), n, device=xyz_m.device)
    omega = (2 * math.pi / periods).to(torch.float64)
    angles = xyz_m.to(torch.float64).unsqueeze(-1) * omega  # [..., 3, n]
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)  # [..., 6n]
    enc = enc[..., :dim]
    if enc.shape[-1] < dim:
        enc = torch.nn.functional.pad(enc, (0, dim - enc.shape[-1]))
    return enc.to(torch.float32)


class ChannelConvEncoder(nn.Module):
    """Per-channel feature encoder: a strided 1-D conv stack over one token's samples.

    Every token (one channel, one second) goes through the same convolutions on its own, so the
    features know nothing of other channels: mixing across channels is the transformer's job.
    """

    def __init__(self, dim: int, widths: tuple[int, ...] = (32, 64, 128), pooled: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, width in enumerate(widths):
            k = 7 if i == 0 else 5
            layers += [
                nn.Conv1d(c_in, width, k, stride=2, padding=k // 2),
                nn.GroupNorm(min(8, width), width),
                nn.GELU(),
            ]
            c_in = width
        self.convs = nn.Sequential(*layers)
        # A few pooled steps (not one mean) keep coarse order within the second.
        self.pool = nn.AdaptiveAvgPool1d(pooled)
        self.proj = nn.Linear(c_in * pooled, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lead = tokens.shape[:-1]
        x = tokens.reshape(-1, 1, tokens.shape[-1])
        x = self.pool(self.convs(x)).flatten(1)
        return self.proj(x).reshape(*lead, -1)


class ContinuousConvEncoder(nn.Module):
    """S-JEPA's feature encoder (braindecode's SignalJEPA `_ConvFeatureEncoder` layout):
    unpadded strided 1-D convolutions along one channel, (channels, kernel, stride) per layer
    (`SJEPA_CONV_LAYERS`: receptive field 152 samples, stride 128 at 128 Hz), each followed by a
    LayerNorm over its channels and GELU, then a linear map to the model width. That is
    braindecode's `mode="layer_norm"` variant (plus conv biases and the final linear map), not
    its default, whose first-layer GroupNorm normalises over the whole time axis: the per-step
    norm is what makes one token's output independent of the rest of the window.

    The norms act per time step, so nothing mixes time beyond the receptive field: run on a
    token holding one receptive field (`tokenize_record(..., overlap=24)`) the stack gives
    exactly its output at that second when run along the whole channel (`along_channel`).
    """

    def __init__(self, dim: int, layers=SJEPA_CONV_LAYERS) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.field, self.stride = conv_span(self.layers)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = 1
        for width, kernel, step in self.layers:
            self.convs.append(nn.Conv1d(c_in, width, kernel, stride=step))
            self.norms.append(nn.LayerNorm(width))
            c_in = width
        self.proj = nn.Linear(c_in, dim)

    def along_channel(self, signal: torch.Tensor) -> torch.Tensor:
        """[..., T] continuous signals -> [..., T_out, dim] features (T_out = (T - field) //
        stride + 1)."""
        lead = signal.shape[:-1]
        x = signal.reshape(-1, 1, signal.shape[-1])
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.gelu(norm(conv(x).transpose(1, 2)).transpose(1, 2))
        return self.proj(x.transpose(1, 2)).reshape(*lead, -1, self.proj.out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.field:
            raise ValueError(
                f"the continuous feature encoder takes tokens of {self.field} samples (one "
                f"receptive field), got {tokens.shape[-1]}: tokenize with overlap "
                f"{self.field - self.stride}"
            )
        return self.along_channel(tokens).squeeze(-2)


class SpectrumEncoder(nn.Module):
    """Per-channel feature encoder on each token's log power spectrum (`log_spectra`, computed
    by the tokenizer): a linear map from the spectrum's bins to the model width. Phase-invariant
    by construction: a rhythm's frequency and power read the same whatever its phase, where a
    conv stack must learn that invariance (BIOT and the other spectrogram-token EEG models embed
    STFT magnitudes this way). Not S-JEPA's encoder."""

    def __init__(self, dim: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.proj = nn.Linear(bins, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.bins:
            raise ValueError(
                f"the spectrum feature encoder takes tokens of {self.bins} log power bins (one "
                f"second's spectrum), got {tokens.shape[-1]}: tokenize with features=spectrum"
            )
        return self.proj(tokens)


class EegEmbedder(nn.Module):
    """S-JEPA embedding: conv features + channel embedding (from xyz) + time encoding.

    features: "segment" (`ChannelConvEncoder` on each 1-s segment), "continuous"
    (`ContinuousConvEncoder`, S-JEPA's stack over the continuous signal) or "spectrum"
    (`SpectrumEncoder` on each 1-s segment's `bins` log power bins)."""

    def __init__(
        self,
        dim: int,
        widths: tuple[int, ...] = (32, 64, 128),
        features: str = "segment",
        bins: int = 65,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding width must be even, got {dim}")
        if features not in FEATURE_ENCODERS:
            raise ValueError(f"features must be one of {FEATURE_ENCODERS}, got {features!r}")
        self.dim = dim
        if features == "segment":
            self.features: nn.Module = ChannelConvEncoder(dim, widths)
        elif features == "continuous":
            self.features = ContinuousConvEncoder(dim)
        else:
            self.features = SpectrumEncoder(dim, bins)
        self.channel_proj = nn.Linear(dim, dim)
        # Channels with no known position share one learned embedding.
        self.unknown_channel = nn.Parameter(torch.randn(dim) * 0.02)
        self.init_weights()

    def init_weights(self) -> None:
        """Identity channel projection: at the start the channel embedding is exactly the xyz
        sin-cos encoding, and training moves it from there. `engine.model.Encoder` calls this
        again after its generic (truncated-normal) init of every linear layer."""
        with torch.no_grad():
            self.channel_proj.weight.copy_(torch.eye(self.dim))
            self.channel_proj.bias.zero_()

    def channel_embedding(self, coords: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] from the xyz columns of coords [B, N, 6]."""
        xyz = coords[..., X : Z + 1].to(torch.float32) / UM_PER_M
        enc = xyz_sincos(xyz, self.dim).to(self.channel_proj.weight.dtype)
        emb = self.channel_proj(enc)
        known = coords[..., HAS_POSITION : HAS_POSITION + 1] > 0
        return torch.where(known, emb, self.unknown_channel.to(emb.dtype))

    def position(self, coords: torch.Tensor) -> torch.Tensor:
        """Channel embedding + sin-cos of the second: [B, N, dim]."""
        time = sincos_1d(coords[..., SECOND], self.dim).to(self.channel_proj.weight.dtype)
        return self.channel_embedding(coords) + time

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """The per-channel conv features alone [..., dim] (S-JEPA's local encoder)."""
        return self.features(tokens.to(self.channel_proj.weight.dtype))

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.local(tokens) + self.position(coords)


# --------------------------------------------------------------------------------------------
# Spatial block masking


@dataclass(frozen=True)
class SpatialBlock:
    """One target block: the centre electrode, the channels masked, seconds [start, stop)."""

    centre: int
    channels: np.ndarray
    start: int
    stop: int


class SpatialBlockMasker:
    """S-JEPA's spatial block masking, one sample at a time, variable lengths.

    Each block (`num` of each `SpatialSpec` in `specs`, or `num_targets` blocks of one spec
    built from the other arguments) picks a random electrode with a known position and masks
    the `round(U(channel_scale) * channels)` electrodes nearest to it (ties broken by channel
    index), or with `radius` (metres) every electrode within that distance, over a contiguous
    run of `round(U(time_scale) * seconds)` seconds. Channels without a position are never masked
    (they are infinitely far from every centre); if no channel has a position, channels are
    drawn at random. The context is every token in no block; draws again (up to `max_tries`)
    while it keeps fewer than `min_context` of the tokens.
    """

    def __init__(
        self,
        num_targets: int = 1,
        channel_scale: tuple[float, float] = (0.15, 0.3),
        time_scale: tuple[float, float] = (1.0, 1.0),
        radius: float | None = None,
        min_context: float = 0.1,
        max_tries: int = 100,
        specs: Sequence[SpatialSpec] | None = None,
    ) -> None:
        if specs is None:
            specs = [SpatialSpec(num_targets, tuple(channel_scale), tuple(time_scale), radius)]
        if not specs:
            raise ValueError("expected at least one block spec")
        if not 0 <= min_context < 1:
            raise ValueError(f"min_context must be in [0, 1), got {min_context}")
        self.specs = tuple(specs)
        self.min_context = float(min_context)
        self.max_tries = int(max_tries)

    @classmethod
    def from_options(cls, opts: SJepaMethod) -> SpatialBlockMasker:
        """From the method options (`modality.masks`, `modality.min_context`)."""
        return cls(min_context=opts.min_context, max_tries=opts.max_tries, specs=opts.masks)

    def block_size(self, n_channels: int, u: float) -> int:
        """Channels in a block drawn with scale `u` among `n_channels`."""
        return int(min(n_channels, max(1, round(u * n_channels))))

    def draw_blocks(self, rng: np.random.Generator, coords: np.ndarray) -> list[SpatialBlock]:
        """The target blocks of one draw (without the context check)."""
        channels, first = np.unique(coords[:, CHANNEL], return_index=True)
        pos = coords[first, X : Z + 1].astype(np.float64) / UM_PER_M
        has = coords[first, HAS_POSITION] > 0
        n_sec = int(coords[:, SECOND].max()) + 1
        blocks = []
        for spec in (s for s in self.specs for _ in range(s.num)):
            k = self.block_size(len(channels), rng.uniform(*spec.channel_scale))
            if has.any():
                centre = int(rng.choice(np.flatnonzero(has)))
                dist = np.where(has, np.linalg.norm(pos - pos[centre], axis=1), np.inf)
                if spec.radius is not None:
                    chosen = np.flatnonzero(dist <= spec.radius)
                else:
                    order = np.lexsort((channels, dist))  # nearest first, ties by channel index
                    chosen = order[: min(k, int(has.sum()))]
            else:
                chosen = rng.choice(len(channels), size=k, replace=False)
                centre = int(chosen[0])
            length = int(min(n_sec, max(1, round(rng.uniform(*spec.time_scale) * n_sec))))
            start = int(rng.integers(0, n_sec - length + 1))
            blocks.append(
                SpatialBlock(
                    int(channels[centre]), np.sort(channels[chosen]), start, start + length
                )
            )
        return blocks

    def __call__(
        self, rng: np.random.Generator, coords: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Context and target token indices (sorted int64) for one sample's coords [N, 6]."""
        context, targets, _ = self.draw(rng, coords)
        return context, targets

    def draw(
        self, rng: np.random.Generator, coords: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], list[SpatialBlock]]:
        """`__call__`'s draw plus the blocks it came from (centres, channels; for pictures)."""
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 6 or len(coords) == 0:
            raise ValueError(f"EEG coords must be [N, 6] with N > 0, got shape {coords.shape}")
        need = max(1, math.ceil(self.min_context * len(coords)))
        for _ in range(self.max_tries):
            targets = []
            blocks = self.draw_blocks(rng, coords)
            for b in blocks:
                hit = np.isin(coords[:, CHANNEL], b.channels)
                hit &= (coords[:, SECOND] >= b.start) & (coords[:, SECOND] < b.stop)
                targets.append(np.flatnonzero(hit).astype(np.int64))
            masked = np.zeros(len(coords), dtype=bool)
            for t in targets:
                masked[t] = True
            context = np.flatnonzero(~masked).astype(np.int64)
            if len(context) >= need and all(len(t) for t in targets):
                return context, targets, blocks
        raise ValueError(
            f"could not draw a spatial mask leaving {need} of {len(coords)} tokens as context in "
            f"{self.max_tries} tries; lower the blocks of modality.masks (num, channel_scale)"
        )
