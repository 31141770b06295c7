"""Modalities: one module per data type (reader, tokenizer, positional embedding, masker, demo).

May import numpy, pyarrow and torch at top level. Heavy readers (nibabel, mne, open3d, librosa, av)
are imported inside the functions that need them, so `engine` and `kernels` load without them.
Never imports `engine` or `pipelines` (the shard format module `pipelines.shards` excepted).
"""

from __future__ import annotations

import importlib

from modalities.base import Modality, ModalityError, ReadContext

# name -> module path; each module exposes `MODALITY`, an instance of `Modality`.
_REGISTRY: dict[str, str] = {
    "eeg": "modalities.eeg",
    "fmri": "modalities.fmri",
}


def available() -> list[str]:
    """Names of the registered modalities."""
    return sorted(_REGISTRY)


def get_modality(name: str) -> Modality:
    """The modality object registered under `name` (imported on first use)."""
    try:
        module_path = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(available())}") from None
    return importlib.import_module(module_path).MODALITY


__all__ = ["Modality", "ModalityError", "ReadContext", "available", "get_modality"]
