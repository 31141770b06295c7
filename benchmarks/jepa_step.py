"""One full JEPA training step at ViT-B/16 image-JEPA shapes: our engine vs the I-JEPA approach.

    python benchmarks/jepa_step.py [--steps 20] [--rounds 3] [--json FILE]    # GPU: ViT-B/16
    python benchmarks/jepa_step.py --tiny                                    # CPU smoke run
    python benchmarks/jepa_step.py --check                                   # CPU equivalence

A step = context encoder forward on the context tokens, target encoder forward (no grad, all
tokens, layer norm), predictor forward over context + mask tokens per target block, smooth L1
loss, backward, AdamW step, EMA update of the fp32 target. Three ways, in one run, from the same
initial weights and the same masks (I-JEPA multi-block: 4 targets of 15-20%, context 85-100%
minus the targets; 196 tokens per sample):

- ours: `engine.model` on packed variable-length tokens (Triton `varlen_attention` and
  `gather_tokens`, fused `ema_`), nothing truncated.
- reference (truncated): the same modules run as the I-JEPA code runs them: every mask cut to
  the batch minimum length, padded [B, N, D] tensors, `apply_masks` (int64 [B, K, D] index +
  `torch.gather`), `F.scaled_dot_product_attention` on the dense batch, per-parameter EMA loop.
  It processes fewer tokens than the masks hold.
- reference (padded): the same but masks padded to the batch maximum with a key-padding mask,
  so it processes every masked token (equal useful tokens to ours, plus padding).

Both references use the same AdamW (torch default implementation) as ours, bf16 autocast on CUDA.
Reported per path: median step time over `--steps` CUDA-synchronised steps after `--warmup`
(phases fwd / bwd / optimizer / EMA from CUDA events inside the same steps), token counts,
tokens/s with tokens = context tokens + predicted target tokens, time per token, model FLOPs
and MFU against a bf16 matmul measured in the same run (`kernels.bench.measure_ceilings`).

Model FLOPs per step (weights' matmuls and attention; norms, biases, elementwise ignored), with
D / Dp encoder / predictor width, L / Lp depths, P patch dim, B*N all tokens, Tc context tokens,
Tt target tokens, Tp = sum over target blocks of (its sample's context + block length), lc / lp
per-sequence lengths of context encoder / predictor, W = 4 D^2 + 2 D h (h = MLP width), Wp alike:
    trained = P*D*B*N + L*W*Tc + D*Dp*(2*Tc + Tt) + Lp*Wp*Tp + Dp*D*Tt
    flops   = 6 * trained + 3.5 * (4*D*L*sum(lc^2) + 4*Dp*Lp*sum(lp^2))     (fwd + bwd)
            + 2 * (P*D + L*W) * B*N + 4*D*L*B*N^2                           (target, fwd only)
Each path is credited with the tokens it computes usefully (the truncated reference with its
truncated lengths; the padded one with the same useful tokens as ours, not its padding).

On CPU (no GPU) the kernels run their torch reference paths at tiny sizes: those numbers only
show the script runs and are not the benchmark. `--check` (CPU, fp32, tiny) verifies that ours
and the padded reference give the same loss, gradients and post-step weights, and that ours on
truncated masks matches the truncated reference; exit status 1 if not.

The reference paths live in benchmarks/jepa_reference.py. Imports torch, numpy, `kernels`,
`engine.objective`, `engine/model.py`, `modalities/grid.py` and that file only, so it runs on a
bare GPU box (torch + triton + numpy): `engine/model.py` is loaded with a stand-in for
`engine.config` (which imports yaml) and `modalities/grid.py` by file (the `modalities` package
imports pyarrow). Never asserts timings; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.objective import jepa_loss  # noqa: E402
from kernels import _dispatch  # noqa: E402
from kernels.bench import measure_ceilings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jepa_reference import (  # noqa: E402
    ref_batch,
    truncate,
)
from jepa_step_parts import (  # noqa: E402
    TINY,
    ModelShape,
    StepRunner,
    build,
    counts,
    eg,
    em,
    make_data,
    pack,
    padded_counts,
    rel,
    step_flops,
    time_steps,
    to_device,
)

# ----------------------------------------------------------------------------- --check


# fp32 relative tolerances. AdamW's first step is about lr * sign(grad), so rounding-level grad
# differences on near-zero gradients (e.g. the key bias, whose gradient is zero in exact
# arithmetic) move the updated weights by more than the grads differ: a looser bound there.
TOL = {"loss": 1e-5, "grads": 1e-5, "weights": 1e-4, "ema": 1e-5}


def _compare_pair(a: StepRunner, b: StepRunner, label: str) -> list[tuple[str, str, float]]:
    """(kind, label, rel diff): loss, gradients, then weights and EMA target after one step."""
    out = []
    la, lb = a.loss(a.batches[0]), b.loss(b.batches[0])
    out.append(("loss", label, rel(la.detach(), lb.detach())))
    la.backward()
    lb.backward()
    pairs = list(zip(a.model.parameters(), b.model.parameters(), strict=True))
    out.append(("grads", label, max(rel(pa.grad, pb.grad) for pa, pb in pairs)))
    for r in (a, b):
        r.opt.step()
        r.update_target()
    out.append(("weights", label, max(rel(pa.detach(), pb.detach()) for pa, pb in pairs)))
    targets = zip(a.t_params, b.t_params, strict=True)
    out.append(("ema", label, max(rel(pa, pb) for pa, pb in targets)))
    return out


def run_check(args: argparse.Namespace) -> int:
    """CPU, fp32, tiny: ours == padded reference and ours on truncated masks == truncated
    reference (loss, grads, post-step weights and EMA target)."""
    shape = ModelShape(**TINY)
    device = torch.device("cpu")
    tokens, coords, masks = make_data(shape, 1, args.seed)[0]
    tm = truncate(masks)
    results: list[tuple[str, str, float]] = []
    for label, ours_masks, pad in (
        ("ours vs padded reference (no truncation)", masks, True),
        ("ours on truncated masks vs truncated reference", tm, False),
    ):
        model = build(shape, device, args.seed)
        a = StepRunner("ours", model, [pack(tokens, coords, ours_masks)], True, False)
        b = StepRunner(
            "ref", copy.deepcopy(model), [ref_batch(tokens, coords, masks, pad)], False, False
        )
        results += _compare_pair(a, b, label)
    names = {
        "loss": "loss",
        "grads": "grads (worst tensor)",
        "weights": "weights after AdamW step (worst tensor)",
        "ema": "EMA target after step (worst tensor)",
    }
    failed = [f"{k} {label}" for k, label, v in results if not v <= TOL[k]]
    for k, label, v in results:
        ok = "ok  " if v <= TOL[k] else "FAIL"
        print(f"{ok} {names[k]}, {label}: rel diff {v:.2e} (tol {TOL[k]:g})")
    lc = [len(c) for c, _ in masks]
    lt = [len(t) for _, ts in masks for t in ts]
    print(
        f"     masks: context {min(lc)}-{max(lc)} tokens, target blocks {min(lt)}-{max(lt)}; "
        f"truncation keeps {len(tm[0][0])} and {len(tm[0][1][0])}"
    )
    print(
        f"jepa_step --check: {'PASS' if not failed else 'FAIL'} ({len(results) + 1} comparisons, "
        "fp32 CPU, tiny model)"
    )
    return 0 if not failed else 1


# ----------------------------------------------------------------------------- main


PATHS = ("ours", "ours-tgraph", "ours-eager", "ours-torchln", "ref-trunc", "ref-pad")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/jepa_step.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per path (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per path first")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default 64)")
    p.add_argument("--pred-depth", type=int, default=None, help="predictor depth (default 12)")
    p.add_argument("--mask-draws", type=int, default=4, help="distinct mask draws, cycled")
    p.add_argument("--tiny", action="store_true", help="depth 2, width 64, batch 4 (CPU default)")
    p.add_argument("--full", action="store_true", help="ViT-B shapes even on CPU (very slow)")
    p.add_argument(
        "--paths",
        default="ours,ref-trunc,ref-pad",
        help="comma list of paths: ours (CUDA graphs of the step and the target), ours-tgraph "
        "(only the target's graph), ours-eager (no graphs), ours-torchln (ours on torch's "
        "LayerNorm, not the fused kernel), ref-trunc, ref-pad",
    )
    p.add_argument("--check", action="store_true", help="CPU equivalence check, then exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds of --steps steps per path (default 3 on GPU, 1 on CPU)",
    )
    p.add_argument("--tiles", default=None, help="attention tiles JSON (kernels_tune.py --write)")
    p.add_argument(
        "--profile",
        default=None,
        help="after timing, profile 3 steps of each path with torch.profiler and write the "
        "per-op tables (device and host time, top 40) to this text file",
    )
    args = p.parse_args(argv)
    args.paths = args.paths.split(",")
    for name in args.paths:
        if name not in PATHS:
            p.error(f"unknown path {name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return run_check(args)
    if args.tiles:
        from kernels.attention import load_tiles

        print(f"attention tiles from {args.tiles}: {load_tiles(args.tiles)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    tiny = args.tiny or (not on_gpu and not args.full)
    shape = ModelShape(**(TINY if tiny else {}))
    if args.batch:
        shape.batch = args.batch
    if args.pred_depth:
        shape.pred_depth = args.pred_depth
    steps = args.steps or (20 if on_gpu else 3)
    if args.rounds is None:
        args.rounds = 3 if on_gpu else 1
    if args.rounds < 1:
        print("jepa_step: --rounds must be at least 1", file=sys.stderr)
        return 2
    dev_name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    backend = "triton" if _dispatch.use_triton("auto", torch.empty(0, device=device)) else "torch"
    if not on_gpu:
        print(
            "CPU run: kernels use their torch reference paths at tiny sizes; these numbers only "
            "show the script runs. They are not the benchmark (that needs a GPU)."
        )
    t0 = time.perf_counter()
    ceil = measure_ceilings(device, quick=not on_gpu, reps=10 if on_gpu else 3)
    data = make_data(shape, args.mask_draws, args.seed)
    model = build(shape, device, args.seed)
    paths: dict[str, StepRunner] = {}
    # Token counts averaged over the mask draws; each path credited with what it computes.
    mean = lambda ds: {k: statistics.fmean(d[k] for d in ds) for k in ds[0]}  # noqa: E731
    useful = mean([counts(shape, m) for _, _, m in data])
    tok = {name: useful for name in PATHS if name.startswith("ours")}
    tok["ref-trunc"] = mean([counts(shape, truncate(m)) for _, _, m in data])
    tok["ref-pad"] = useful
    computed = {**tok, "ref-pad": {**useful, **mean([padded_counts(shape, m) for _, _, m in data])}}
    for name in args.paths:
        ours = name.startswith("ours")
        if ours:
            batches = [pack(t, c, m) for t, c, m in data]
        else:
            batches = [ref_batch(t, c, m, pad=name == "ref-pad") for t, c, m in data]
        runner_model = copy.deepcopy(model)
        em.set_fused_layernorm(runner_model, name != "ours-torchln")
        paths[name] = StepRunner(
            name,
            runner_model,
            to_device(batches, device),
            ours,
            on_gpu,
            graph_target=ours and name != "ours-eager",
            graph_step=ours and name not in ("ours-eager", "ours-tgraph"),
        )
    del model

    # Same weights, same masks: ours and the padded reference must agree before any timing.
    check = {}
    if "ours" in paths and "ref-pad" in paths:
        with torch.no_grad():
            la = paths["ours"].loss(paths["ours"].batches[0])
            lb = paths["ref-pad"].loss(paths["ref-pad"].batches[0])
        check = {"loss_ours": float(la), "loss_ref_pad": float(lb), "rel_diff": rel(la, lb)}
        tol = 2e-2 if on_gpu else 1e-4
        print(
            f"check before timing: loss ours {float(la):.6f} vs padded reference "
            f"{float(lb):.6f} (rel diff {check['rel_diff']:.1e}, tolerance {tol:g})"
        )
        if not check["rel_diff"] <= tol:
            print("jepa_step: ours and the reference disagree; not timing", file=sys.stderr)
            return 1

    # The target's CUDA graph must give the eager forward's numbers (same kernels, replayed).
    if "ours" in paths and on_gpu:
        runner = paths["ours"]
        with torch.no_grad(), runner._ctx():
            graphed = runner.target_features(runner.batches[0])
            eager = em.target_features(runner.target, runner.batches[0])
        check["target_graph_rel_diff"] = rel(graphed, eager)
        check["target_graph_failed"] = runner.target_features.failed
        print(
            f"check before timing: target features from the CUDA graph vs eager, rel diff "
            f"{check['target_graph_rel_diff']:.1e}"
            + (
                f" (capture failed: {runner.target_features.failed})"
                if runner.target_features.failed
                else ""
            )
        )
        if not check["target_graph_rel_diff"] <= 1e-5:
            print(
                "jepa_step: the target's CUDA graph disagrees with eager; not timing",
                file=sys.stderr,
            )
            return 1

    # The step's CUDA graph replays the padded batch's eager forward and backward: the same
    # kernels on the same shapes, so the same numbers; and the padding leaves the unpadded
    # batch's numbers, up to float rounding (matrix multiplies over more rows).
    if "ours" in paths and on_gpu:
        step = check_step_graph(paths["ours"])
        check.update(step)
        if step["step_graph_failed"] is not None or not step["step_graph_ok"]:
            print(
                "jepa_step: the step's CUDA graph disagrees with eager; not timing", file=sys.stderr
            )
            return 1

    # Rounds interleave the paths (ours, refs, ours, refs, ...) so that drift in clocks or host
    # load hits every path alike; each path's numbers are medians over the steps of all rounds.
    raw: dict[str, dict[str, list[float]]] = {}
    round_ms: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, path in paths.items():
            per = time_steps(path, device, steps, args.warmup if r == 0 else 2)
            round_ms[name].append(statistics.median(per["step"]))
            for k, v in per.items():
                raw.setdefault(name, {}).setdefault(k, []).extend(v)
            if on_gpu:
                torch.cuda.synchronize(device)
    rows = []
    for name in paths:
        ms = {k: statistics.median(v) for k, v in raw[name].items()}
        c = tok[name]
        flops = step_flops(shape, c)
        n_tok = c["ctx"] + c["tgt"]
        rows.append(
            {
                "path": name,
                "ms": ms,
                "tokens": {k: c[k] for k in ("ctx", "tgt", "pred", "target_encoder")},
                "computed_tokens": {k: computed[name][k] for k in ("ctx", "tgt", "pred")},
                "tokens_per_s": n_tok / ms["step"] * 1e3,
                "us_per_token": ms["step"] * 1e3 / n_tok,
                "model_tflop": flops / 1e12,
                "tflops": flops / ms["step"] / 1e9,
                "mfu": flops / ms["step"] / 1e9 / ceil["matmul_tflops"],
                "round_step_ms": round_ms[name],
            }
        )
    by = {r["path"]: r for r in rows}
    if "ours" in by:
        for r in rows:
            r["speedup_step"] = r["ms"]["step"] / by["ours"]["ms"]["step"]
            r["speedup_per_token"] = by["ours"]["tokens_per_s"] / r["tokens_per_s"]

    report = {
        "device": dev_name,
        "step_graphs": {
            name: {
                "buckets": path.model.cuda_graphs.captures,
                "ratio": path.model.cuda_graphs.ratio,
            }
            for name, path in paths.items()
            if path.ours
        },
        "kernels": backend,
        "torch": torch.__version__,
        "dtype": "bf16 autocast" if on_gpu else "fp32",
        "shape": asdict(shape) | {"tokens": shape.tokens, "tiny": tiny},
        "steps": steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "mask_draws": args.mask_draws,
        "ceilings": ceil,
        "check": check,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    print_table(report)
    if args.profile:
        write_profile(paths, device, Path(args.profile))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _pred_and_grads(
    path: StepRunner, forward: Callable, batches: list, autocast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last batch's predictions and the gradients accumulated over `batches` (all
    parameters' gradients flattened into one vector)."""
    path.model.zero_grad(set_to_none=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)
    for batch in batches:
        with amp:
            pred = forward(batch)
            tgt = path.target_features(batch)
            jepa_loss(pred, tgt.float(), "smooth_l1").backward()
    grads = torch.cat([p.grad.detach().reshape(-1) for p in path.model.parameters()])
    path.model.zero_grad(set_to_none=True)
    return pred.detach().float().clone(), grads.clone()


def check_step_graph(path: StepRunner) -> dict[str, Any]:
    """The step's CUDA graphs against eager, in fp32 and in bf16 autocast (the timed precision).

    Per precision, predictions and gradients (all parameters as one vector, relative
    difference) three ways: graphed, the padded batch eagerly, the unpadded batch eagerly; and
    gradients accumulated over two micro-batches of one bucket, graphed vs padded eagerly (the
    second replay must not overwrite the first micro-batch's gradient). In fp32 the graph must
    match eager to rounding; in bf16, matrix multiplies captured on the graphs' stream may pick
    other cuBLAS kernels than eager ones, so gradients differ at bf16 rounding (1e-3).
    """
    b0 = path.batches[0]
    two = [b0, dataclasses.replace(b0, tokens=0.5 * b0.tokens)]  # same masks: same bucket
    installed = path.model.cuda_graphs
    out: dict[str, Any] = {"step_graph_failed": None}
    ok = True
    for name, autocast, tol in (("fp32", False, 1e-5), ("bf16", True, 2e-2)):
        graphed = eg.GraphedJEPA(path.model)  # a fresh one: these graphs are dropped after
        path.model.cuda_graphs = graphed
        sizes = eg.padded_sizes(b0, graphed.ratio)

        def padded_eager(batch, sizes=sizes):
            return path.model.forward_eager(eg.pad_batch(batch, sizes))[: batch.tgt_idx.numel()]

        try:
            g_pred, g_grads = _pred_and_grads(path, path.model, [b0], autocast)
            p_pred, p_grads = _pred_and_grads(path, padded_eager, [b0], autocast)
            e_pred, e_grads = _pred_and_grads(path, path.model.forward_eager, [b0], autocast)
            _, ga_grads = _pred_and_grads(path, path.model, two, autocast)
            _, pa_grads = _pred_and_grads(path, padded_eager, two, autocast)
        finally:
            path.model.cuda_graphs = installed
        res = {
            "graph_vs_padded_eager": {
                "pred": rel(g_pred, p_pred),
                "grads": rel(g_grads, p_grads),
                "accumulated_grads": rel(ga_grads, pa_grads),
            },
            "padded_vs_unpadded_eager": {
                "pred": rel(p_pred, e_pred),
                "grads": rel(p_grads, e_grads),
            },
            "tolerance": tol,
        }
        out[name] = res
        out["step_graph_failed"] = out["step_graph_failed"] or graphed.failed
        a, b = res["graph_vs_padded_eager"], res["padded_vs_unpadded_eager"]
        ok = ok and graphed.failed is None and max(*a.values(), *b.values()) <= tol
        print(
            f"check before timing ({name}): step CUDA graph vs the padded batch eagerly: pred "
            f"{a['pred']:.1e}, grads {a['grads']:.1e}, accumulated over 2 micro-batches "
            f"{a['accumulated_grads']:.1e}; padded vs unpadded eagerly: pred {b['pred']:.1e}, "
            f"grads {b['grads']:.1e} (tolerance {tol:g})"
            + (f" (capture failed: {graphed.failed})" if graphed.failed else "")
        )
    out["step_graph_ok"] = ok
    return out


def write_profile(paths: dict[str, StepRunner], device: torch.device, out: Path) -> None:
    """torch.profiler tables of 3 steps per path: where device time and host time go."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, path in paths.items():
        with profile(activities=acts) as prof:
            for _ in range(3):
                path.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60)
        parts.append(f"=== {name}: 3 steps, sorted by {sort}\n{table}")
    out.write_text("\n\n".join(parts))
    print(f"profile tables: {out}")


def print_table(rep: dict) -> None:
    s, c = rep["shape"], rep["ceilings"]
    print(
        f"\ndevice: {rep['device']} | kernels: {rep['kernels']} | torch {rep['torch']} | "
        f"{rep['dtype']}{' | CPU: NOT the benchmark' if rep['device'] == 'CPU' else ''}"
    )
    print(
        f"ceilings (same run): matmul {c['matmul_tflops']:.1f} TFLOP/s ({c['matmul']}), "
        f"copy {c['copy_gbps']:.0f} GB/s"
    )
    print(
        f"shape: {s['tokens']} tokens/sample, width {s['embed_dim']} depth {s['depth']} heads "
        f"{s['num_heads']}, predictor {s['pred_dim']}/{s['pred_depth']}/{s['pred_heads']}, "
        f"batch {s['batch']}, {s['num_targets']} targets; median of {rep['steps']} steps x "
        f"{rep.get('rounds', 1)} interleaved rounds after {rep['warmup']} warm-up, "
        f"{rep['mask_draws']} mask draws cycled"
    )
    print(
        "tokens = context + target tokens per step (means over the mask draws); "
        "x step, x /tok: ours' speedup over that path (its step time, its time per token / ours)\n"
    )
    hdr = (
        f"{'path':<12} {'step ms':>8} {'fwd':>7} {'bwd':>7} {'opt':>7} {'ema':>7} "
        f"{'ctx tok':>8} {'tgt tok':>8} {'pred tok':>8} {'tok/s':>10} {'us/tok':>7} "
        f"{'TFLOP':>6} {'TFLOP/s':>8} {'MFU':>6} {'x step':>7} {'x /tok':>7}"
    )
    print(hdr)
    for r in rep["rows"]:
        m, t = r["ms"], r["tokens"]
        print(
            f"{r['path']:<12} {m['step']:>8.2f} {m['fwd']:>7.2f} {m['bwd']:>7.2f} "
            f"{m['opt']:>7.2f} {m['ema']:>7.2f} {t['ctx']:>8.0f} {t['tgt']:>8.0f} "
            f"{t['pred']:>8.0f} {r['tokens_per_s']:>10.0f} {r['us_per_token']:>7.3f} "
            f"{r['model_tflop']:>6.2f} {r['tflops']:>8.1f} {100 * r['mfu']:>5.1f}% "
            f"{r.get('speedup_step', math.nan):>6.2f}x "
            f"{r.get('speedup_per_token', math.nan):>6.2f}x"
        )
    pad = next((r for r in rep["rows"] if r["path"] == "ref-pad"), None)
    if pad:
        ct = pad["computed_tokens"]
        print(
            f"(ref-pad computes {ct['ctx']:.0f} ctx / {ct['tgt']:.0f} tgt / {ct['pred']:.0f} "
            "pred tokens incl. padding; credited with the useful ones)"
        )
    for name, g in rep.get("step_graphs", {}).items():
        if g["buckets"]:
            print(
                f"({name}: {g['buckets']} size buckets captured as CUDA graphs, ratio {g['ratio']})"
            )
    by = {r["path"]: r for r in rep["rows"]}
    if "ours" in by and rep.get("rounds", 1) > 1:
        ours_r = by["ours"]["round_step_ms"]
        for r in rep["rows"]:
            if r["path"] == "ours":
                continue
            # Per round: ours' speedup per token over this path, from that round's medians.
            scale = by["ours"]["tokens_per_s"] * by["ours"]["ms"]["step"]
            scale /= r["tokens_per_s"] * r["ms"]["step"]
            per = [scale * b / a for a, b in zip(ours_r, r["round_step_ms"], strict=True)]
            print(
                f"per round, ours per token over {r['path']}: " + " ".join(f"{x:.2f}x" for x in per)
            )
    if "ours" in by and "ref-trunc" in by:
        x = by["ref-trunc"]["speedup_per_token"]
        print(
            f"\njepa_step: ours {by['ours']['ms']['step']:.2f} ms vs I-JEPA reference "
            f"{by['ref-trunc']['ms']['step']:.2f} ms per step; {x:.2f}x per token at equal "
            f"token counts (target >= 1.3x: {'met' if x >= 1.3 else 'NOT met'}); MFU ours "
            f"{100 * by['ours']['mfu']:.1f}% on {rep['device']} in {rep['seconds']:.0f} s"
        )
    else:
        print(f"\njepa_step: {len(rep['rows'])} paths on {rep['device']} in {rep['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
