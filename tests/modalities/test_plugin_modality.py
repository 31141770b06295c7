"""A modality from a separate, installed package: registered through the `jepa_forge.modalities`
entry point group only, it ingests, trains, probes and draws with the project's CLIs, and nothing
in the project's folders names it.

The package is written to a temporary site directory with its `.dist-info` (what `pip install`
leaves behind: METADATA and entry_points.txt), put on PYTHONPATH for the subprocesses, so the
test neither installs into the environment nor touches the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TOY = '''
"""A toy modality: .npy files holding [rows, frames] float arrays; file name SUBJECT_cLABEL.npy."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from modalities.base import Modality, ModalityError
from modalities.grid import GridPieces


@dataclass
class ToyOptions:
    rows: int = 4
    frames: int = 32


class ToyModality(GridPieces, Modality):
    name = "toy"
    extensions = (".npy",)
    options_type = ToyOptions
    demo_size = 12
    grid_column = "grid"

    def schema(self, opts):
        return pa.schema([
            ("subject", pa.string()),
            ("label", pa.int32()),
            ("grid", pa.fixed_shape_tensor(pa.float32(), [opts.rows, opts.frames])),
        ])

    def read(self, ctx, opts):
        try:
            x = np.load(ctx.local_path, allow_pickle=False)
        except ValueError as e:
            raise ModalityError(f"not a .npy array ({e})") from None
        if x.shape != (opts.rows, opts.frames):
            raise ModalityError(f"expected shape {(opts.rows, opts.frames)}, got {x.shape}")
        subject, _, label = Path(ctx.source).name.removesuffix(".npy").partition("_c")
        yield {"subject": subject, "label": int(label), "grid": x.astype(np.float32)}

    def demo(self, out_dir, n, seed):
        rng = np.random.default_rng(seed)
        paths = []
        t = np.arange(32)
        for i in range(n):
            label = i % 2
            x = np.sin((0.3 + 0.4 * label) * t + rng.uniform(0, 6, (4, 1)))
            x = x + 0.1 * rng.standard_normal((4, 32))
            path = Path(out_dir) / f"sub-{i:02d}_c{label}.npy"
            np.save(path, x.astype(np.float32))
            paths.append(str(path))
        return paths

    def draw(self, ds, index, rng, opts):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from modalities.show import Drawing

        x = np.asarray(ds[index]["grid"])
        fig, ax = plt.subplots()
        ax.imshow(x, aspect="auto")
        return Drawing(fig, f"toy grid {x.shape}")


MODALITY = ToyModality()
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "toy_jepa_modality").mkdir()
    (root / "toy_jepa_modality" / "__init__.py").write_text(textwrap.dedent(TOY))
    info = root / "toy_jepa_modality-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-jepa-modality\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[jepa_forge.modalities]\ntoy = toy_jepa_modality:MODALITY\n"
    )
    return root


def run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    env["JEPA_FORGE_CACHE"] = str(cwd / "cache")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_a_plugin_modality_ingests_trains_probes_and_draws(site, tmp_path):
    data, runs = tmp_path / "data", tmp_path / "run"
    # no --input: the modality's own demo files (its demo_size, 12)
    out = run(["pipelines.ingest", "toy", "--output", str(data), "--num-cpus", "1"], site, tmp_path)
    assert "12 sources ok" in out.stdout, out.stdout
    manifest = json.loads((data / "index.json").read_text())
    assert manifest["modality"] == "toy" and manifest["totals"]["records"] == 12

    tiny = [
        "data.batch_size=4", "data.num_workers=0", "modality.patch_len=8", "model.embed_dim=32",
        "model.depth=1", "model.num_heads=2", "model.pred_dim=16", "model.pred_depth=1",
        "model.pred_heads=2", "modality.masks=[{num: 2}]", "train.progress=false",
    ]  # fmt: skip
    run(["engine.train", "--data", str(data), "--out", str(runs), "--steps", "3", *tiny],
        site, tmp_path)  # fmt: skip
    out = run(
        ["engine.probe", "--checkpoint", str(runs), "--data", str(data), "--label", "label",
         "--folds", "2", "--baseline"], site, tmp_path,
    )  # fmt: skip
    assert "target features" in out.stdout and "random-init features" in out.stdout
    png = tmp_path / "toy.png"
    out = run(["modalities.show", "toy", "--data", str(data), "--out", str(png)], site, tmp_path)
    assert png.stat().st_size > 1000 and "toy grid (4, 32)" in out.stdout
