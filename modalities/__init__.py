"""Modalities: one module per data type (reader, tokenizer, positional embedding, masker, demo).

May import numpy, pyarrow and torch at top level. Heavy readers (nibabel, mne, open3d, librosa, av)
are imported inside the functions that need them, so `engine` and `kernels` load without them.
Never imports `engine` or `pipelines` (the shard format module `pipelines.shards` excepted).

One registry, read by ingest, the engine, `modalities.show` and the demo cache: the built-in
modalities below, plus every entry point of the group `jepa_forge.modalities` an installed
package declares (name = the modality's name, value = "package.module" exposing `MODALITY`, or
"package.module:ATTR"), e.g. in the package's pyproject.toml:

    [project.entry-points."jepa_forge.modalities"]
    toy = "toy_modality:MODALITY"

`get_modality` also takes a "package.module:ATTR" spec directly (`data.modality=...`).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from modalities.base import Modality, ModalityError, ReadContext

ENTRY_POINT_GROUP = "jepa_forge.modalities"


class ModalityNotFound(KeyError):
    """No modality by that name or spec; the message says which ones exist or why it failed."""

    def __str__(self) -> str:
        return str(self.args[0])


# name -> module path; each module exposes `MODALITY`, an instance of `Modality`.
_BUILTIN: dict[str, str] = {
    "audio": "modalities.audio",
    "eeg": "modalities.eeg",
    "fmri": "modalities.fmri",
    "points": "modalities.points",
}


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, str]:
    """name -> "module" or "module:ATTR": the built-ins, then installed entry points (a
    built-in name cannot be taken over by a plugin). Read once per process: scanning the
    installed distributions costs ~15 ms, and ingest workers look a modality up per file."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **_BUILTIN}


def available() -> list[str]:
    """Names of the registered modalities (built-in and installed)."""
    return sorted(_registry())


def _load(spec: str, what: str) -> Modality:
    module, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr or "MODALITY")
    except (ImportError, AttributeError) as e:
        raise ModalityNotFound(f"{what}: cannot load {spec!r} ({e})") from None
    if not isinstance(obj, Modality):
        raise ModalityNotFound(f"{what}: {spec!r} is a {type(obj).__name__}, not a Modality")
    return obj


def get_modality(name: str) -> Modality:
    """The modality registered under `name` (imported on first use), or the object a
    "package.module:ATTR" spec names."""
    if ":" in name:
        return _load(name, "modality")
    registry = _registry()
    if name not in registry:
        raise ModalityNotFound(f"unknown modality {name!r}; known: {', '.join(sorted(registry))}")
    return _load(registry[name], f"modality {name!r}")


__all__ = [
    "ENTRY_POINT_GROUP",
    "Modality",
    "ModalityError",
    "ModalityNotFound",
    "ReadContext",
    "available",
    "get_modality",
]
