"""Run metrics: a tqdm progress bar, `metrics.jsonl`, TensorBoard events and a PNG at the end
(loss, the collapse monitor, and `engine.diagnostics`' position share and attention entropy).

Only rank 0 writes (`MetricsLogger(enabled=False)` on the others is a no-op). On resume,
`truncate_metrics` drops lines past the checkpoint's step, so the file holds one line per step
as if the run had never stopped.
Imports tqdm, torch.utils.tensorboard and (at the end only) matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # a line cut by a kill; everything after it is gone too
    return out


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep the lines with `step <= step` (atomic rewrite)."""
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(p)


class MetricsLogger:
    def __init__(
        self, run_dir: str | Path, total_steps: int, start_step: int, enabled: bool, progress: bool
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._file = open(self.run_dir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        """One line of metrics; `record` must hold `step` and `loss`."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, step)

    def advance(self, n: int, postfix: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                refresh=False,
            )

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._file.close()


def plot_curves(run_dir: str | Path) -> Path | None:
    """Loss, collapse monitor and training diagnostics of a run as a PNG; None when there is
    nothing to plot."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return ([p[0] for p in pts], [p[1] for p in pts])

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_std), (ax_pos, ax_attn) = axes
    ax_loss.plot(*series("loss"))
    ax_loss.set_title("loss")
    for key in ("target_std", "pred_std"):
        ax_std.plot(*series(key), label=key)
    ax_std.set_title("collapse monitor: per-dimension std")
    ax_std.legend(loc="lower left")
    ax_rank = ax_std.twinx()
    ax_rank.plot(*series("target_rank"), color="tab:green", linestyle="--", label="target_rank")
    ax_rank.set_ylabel("effective rank of the targets")
    ax_rank.legend(loc="lower right")
    ax_pos.plot(*series("pos_share"), marker=".", label="pos_share (position's share)")
    ax_pos.plot(*series("rec_share"), marker=".", label="rec_share (record's share)")
    ax_pos.plot(*series("target_const"), marker=".", label="target_const (mean vector's share)")
    ax_pos.set_ylim(0, 1)
    ax_pos.axhline(0.9, color="tab:red", linestyle=":", label="warning threshold")
    ax_pos.set_title("shortcuts: target variance explained by position / record / a constant")
    ax_pos.legend(loc="lower left")
    layers = sorted(
        {k for r in rows for k in r if k.startswith("attn_entropy_")},
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    for key in layers:
        ax_attn.plot(*series(key), marker=".", label=f"layer {key.rsplit('_', 1)[1]}")
    ax_attn.set_ylim(0, 1.05)
    ax_attn.set_title("attention entropy / log N (1 = uniform)")
    if layers:
        ax_attn.legend(loc="lower left")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
