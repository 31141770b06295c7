"""Built-in demo data: generated once per (modality, n, seed) and cached.

The cache lives in $JEPA_FORGE_CACHE (default ~/.cache/jepa-forge)/demo/. A cohort is generated
into a temporary directory and renamed into place, so a killed generation never leaves a
half-written cohort that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from modalities import Modality
from pipelines.shards import forge_cache

# Bump when a generator changes, so caches of the old output are not reused.
DEMO_VERSION = 3


def cache_root() -> Path:
    return forge_cache()


def ensure_demo(modality: Modality, n: int | None = None, seed: int = 0) -> Path:
    """Path of the demo cohort for `modality`, generating it on first use."""
    n = n if n is not None else modality.demo_size
    target = cache_root() / "demo" / f"{modality.name}-v{DEMO_VERSION}-n{n}-seed{seed}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        modality.demo(tmp, n, seed)
        os.replace(tmp, target)
    except OSError:
        # Another process finished the same cohort first: theirs is as good as ours.
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
