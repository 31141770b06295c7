"""DeepSpeed training on one GPU, end to end: `engine.train` at ViT-B size over a real dataset.

    python benchmarks/gpu_train.py [--wheelhouse wheelhouse] [--data DIR] [--steps 300]
        [--save-every 150] [--batch 64] [--out DIR] [--json FILE] [section.key=value ...]

Without a CUDA device it prints one line saying so and exits 0 (`--cpu-smoke` runs the same
sequence on the CPU with a tiny model instead: the script's own check). With one it:

1. makes sure DeepSpeed imports, installing it offline from `--wheelhouse` when it does not (a
   GPU machine without network: `make wheelhouse` builds the folder on a machine with one);
2. trains `engine.train` (ZeRO-2, bf16, the CUDA-graph step and target) for `--steps` steps on
   `--data` (default: the fMRI positive control of `make demo`, demo_data/fmri_control/data,
   256 tokens a record) with a ViT-B sized trunk (768 wide, 12 layers, 12 heads; predictor 384
   wide, 12 layers, I-JEPA's) and reads its samples/s and median step time;
3. runs the same training again, kills it (SIGKILL) once its checkpoint at `--save-every` is
   complete, resumes it with `--resume auto`, and compares the resumed losses with the first
   run's step by step;
4. runs benchmarks/jepa_step.py's `ours` path (the same trunk and predictor, synthetic ViT-B/16
   image batches of 196 tokens, no DeepSpeed, no data loader) at the same batch size: the gap in
   time per token is what DeepSpeed's wrapping and the data pipeline cost;
5. probes the trained target encoder (engine.probe, linear on mean+std pooled features, 8
   labelled subjects, 10 draws, beside the same encoder at random init).

Writes OUT/gpu_train.json (the device's name, every number, the exact commands) and prints a
summary. Never asserts on a number. docs/benchmarks.md ("DeepSpeed on a GPU") records the results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = str(Path(__file__).resolve().parent)
# `python benchmarks/gpu_train.py` puts benchmarks/ first on sys.path, where benchmarks/kernels.py
# would shadow the kernels package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, str(REPO))

#: ViT-B trunk and I-JEPA's ViT-B predictor (benchmarks/jepa_step.py's default shapes)
VIT_B = [
    "model.embed_dim=768",
    "model.depth=12",
    "model.num_heads=12",
    "model.pred_dim=384",
    "model.pred_depth=12",
    "model.pred_heads=12",
]
TINY = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.pred_dim=16",
    "model.pred_depth=1",
    "model.pred_heads=2",
]
#: tokens a record of the default dataset holds (32 parcels x 8 patches of 16 frames)
FMRI_CONTROL_TOKENS = 256


def ensure_deepspeed(wheelhouse: str | None) -> str:
    """DeepSpeed's version, installed from `wheelhouse` (no index) when it is not importable."""
    if importlib.util.find_spec("deepspeed") is None:
        if not wheelhouse:
            raise SystemExit(
                "gpu_train: DeepSpeed is not installed and no --wheelhouse was given (build one "
                "with `make wheelhouse` where there is network, carry it, pass its folder)"
            )
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheelhouse]
        proc = subprocess.run([*cmd, "deepspeed"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"gpu_train: offline install failed:\n{proc.stderr[-3000:]}")
    from importlib.metadata import version

    return version("deepspeed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _train_cmd(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    model = TINY if args.cpu_smoke else VIT_B
    return [
        sys.executable,
        "-m",
        "engine.train",
        *("--data", args.data, "--out", str(out), "--config", args.config),
        *("--steps", str(args.steps), "--save-every", str(args.save_every)),
        *model,
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        "train.progress=false",
        "train.keep_checkpoints=0",
        *args.overrides,
        *extra,
    ]


def _run(cmd: list[str], log: Path) -> float:
    """Run `cmd` to the end (its output to `log`); its wall seconds. SystemExit on failure."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"gpu_train: {shlex.join(cmd)} exited {proc.returncode}\n{tail}")
    return time.perf_counter() - t0


def _run_and_kill(cmd: list[str], log: Path, ckpt: Path, timeout: float = 600) -> None:
    """Start `cmd`, SIGKILL its process group once checkpoint `ckpt` is complete."""
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        t0 = time.monotonic()
        while not (ckpt / "state.json").is_file():
            if proc.poll() is not None:
                raise SystemExit(f"gpu_train: the run to kill ended first ({log})")
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                raise SystemExit(f"gpu_train: no checkpoint {ckpt} after {timeout:.0f} s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_numbers(run: Path, batch: int, skip: int) -> dict:
    """samples/s over the whole run (summary.json) and the median step time after `skip`
    warm-up steps (graph captures, compilation), from the per-step rates in metrics.jsonl."""
    summary = json.loads((run / "summary.json").read_text())
    rates = [r["samples_per_s"] for r in _metrics(run) if r["step"] > skip]
    sps = statistics.median(rates) if rates else float("nan")
    return {
        "seconds": summary["seconds"],
        "samples_per_s_whole_run": summary["samples_per_s"],
        "samples_per_s_median": sps,
        "step_ms_median": batch / sps * 1e3,
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
    }


def resume_numbers(full: Path, resumed: Path, start: int) -> dict:
    """The resumed run's losses after step `start` against the uninterrupted run's."""
    a = {r["step"]: r["loss"] for r in _metrics(full)}
    b = {r["step"]: r["loss"] for r in _metrics(resumed)}
    steps = sorted(s for s in b if s > start)
    diffs = [abs(a[s] - b[s]) for s in steps if s in a]
    return {
        "resumed_from": start,
        "steps_compared": len(diffs),
        "identical": sum(d == 0 for d in diffs),
        "max_abs_diff": max(diffs) if diffs else None,
        "last_loss_full": a.get(max(a)),
        "last_loss_resumed": b.get(max(b)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_train.py", description=__doc__)
    p.add_argument("--wheelhouse", help="folder of wheels to install DeepSpeed from, offline")
    p.add_argument("--data", default=str(REPO / "demo_data" / "fmri_control" / "data"))
    p.add_argument("--config", default=str(REPO / "engine" / "configs" / "fmri_control.yaml"))
    p.add_argument("--label", default="field", help="the probe's label column")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--save-every", type=int, default=150, help="checkpoint (and kill) step")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="loader processes")
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the median")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_train")
    p.add_argument("--json", help="results file (default OUT/gpu_train.json)")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="no GPU: the same sequence on the CPU with a tiny model (checks this script)",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_train: skipped: no CUDA device here (the GPU run needs one)")
        return 0
    if not Path(args.data, "index.json").is_file():
        print(f"gpu_train: {args.data}: no dataset there (make demo writes the default one)")
        return 1
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    ds_version = ensure_deepspeed(args.wheelhouse)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_train: {device}, torch {torch.__version__}, deepspeed {ds_version}", flush=True)

    full, killed = out / "full", out / "killed"
    full_cmd = _train_cmd(args, full)
    killed_cmd = _train_cmd(args, killed)
    resume_cmd = _train_cmd(args, killed, "--resume", "auto")
    _run(full_cmd, out / "full.log")
    trained = train_numbers(full, args.batch, args.warmup)
    print(f"gpu_train: trained: {json.dumps(trained)}", flush=True)

    ckpt = killed / "checkpoints" / f"step-{args.save_every:08d}"
    _run_and_kill(killed_cmd, out / "killed.log", ckpt)
    _run(resume_cmd, out / "resumed.log")
    resume = resume_numbers(full, killed, args.save_every)
    print(f"gpu_train: kill and resume: {json.dumps(resume)}", flush=True)

    step_json = out / "jepa_step.json"
    step_cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "jepa_step.py"),
        *("--paths", "ours", "--json", str(step_json)),
        *(["--tiny"] if args.cpu_smoke else ["--batch", str(args.batch)]),
    ]
    _run(step_cmd, out / "jepa_step.log")
    row = json.loads(step_json.read_text())["rows"][0]
    shape = json.loads(step_json.read_text())["shape"]
    bench_ms = row["ms"]["step"]
    bench = {
        "step_ms": bench_ms,
        "batch": shape["batch"],
        "tokens_per_record": shape["tokens"],
        "records_per_s": shape["batch"] / bench_ms * 1e3,
        "encoder_tokens_per_s": shape["batch"] * shape["tokens"] / bench_ms * 1e3,
    }
    train_tok = trained["samples_per_s_median"] * FMRI_CONTROL_TOKENS
    gap = {
        "encoder_tokens_per_s_train": train_tok,
        "encoder_tokens_per_s_jepa_step": bench["encoder_tokens_per_s"],
        "train_over_jepa_step": train_tok / bench["encoder_tokens_per_s"],
    }

    probe_json = out / "probe.json"
    probe_cmd = [
        sys.executable,
        *("-m", "engine.probe", "--checkpoint", str(full), "--data", args.data),
        *("--label", args.label, "--labels", "8", "--folds", "10", "--pool", "meanstd"),
        *("--baseline", "--json", str(probe_json)),
    ]
    _run(probe_cmd, out / "probe.log")
    res = json.loads(probe_json.read_text())["results"]
    probe = {k: {"mean": v["mean"], "std": v["std"]} for k, v in res.items()}

    record = {
        "device": device,
        "torch": torch.__version__,
        "deepspeed": ds_version,
        "cpu_smoke": args.cpu_smoke,
        "commands": {
            "train": shlex.join(full_cmd),
            "kill_then_resume": shlex.join(resume_cmd),
            "jepa_step": shlex.join(step_cmd),
            "probe": shlex.join(probe_cmd),
        },
        "train": trained,
        "resume": resume,
        "jepa_step": bench,
        "gap": gap,
        "probe": probe,
    }
    path = Path(args.json) if args.json else out / "gpu_train.json"
    path.write_text(json.dumps(record, indent=2))
    print(
        f"gpu_train: {trained['samples_per_s_median']:.1f} samples/s "
        f"({trained['step_ms_median']:.1f} ms/step) in engine.train vs "
        f"{bench['records_per_s']:.1f} records/s ({bench_ms:.1f} ms/step) in jepa_step; "
        f"encoder tokens/s ratio {gap['train_over_jepa_step']:.2f}; resume: "
        f"{resume['identical']}/{resume['steps_compared']} losses identical, max diff "
        f"{resume['max_abs_diff']}; probe {json.dumps(probe)} -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
