"""Shared by the ingest benchmarks: time a command and the peak RSS of its whole process tree;
run a suite of such commands one after the other (a Ray head kept up around the `-warm` ones)
and compare them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `cmd`, timing it and sampling the RSS of its whole process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            peak = max(peak, total)
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20, "stdout": out.decode().strip()}


# The ingest's own per-file work (the modality's reader, the shard writer, the stats) in one
# plain process, no Ray: `python -c SAME_CODE MODALITY OUT FILE...`. What an ingest with 2 CPUs
# is compared against besides the library loop (docs/benchmarks.md).
SAME_CODE = r"""
import sys, pathlib, json
from modalities import ReadContext, get_modality
from pipelines.shards import ShardWriter, records_to_table
from pipelines.worker import full_schema
import pyarrow as pa
name, out, files = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
m = get_modality(name); opts = m.options_type()
schema = full_schema(m.schema(opts))
w = ShardWriter(out, schema)
for f in files:
    ctx = ReadContext(source=f, local_path=f, size=pathlib.Path(f).stat().st_size,
                      max_file_bytes=16 * 2**30)
    recs = [{"id": f"{f}#{i}", "source": f, **r} for i, r in enumerate(m.read(ctx, opts))]
    for lo in range(0, len(recs), 64):
        w.write(records_to_table(recs[lo:lo + 64], schema))
w.close()
def batches():
    for s in w.shards:
        with pa.memory_map(str(out / s.file)) as src:
            r = pa.ipc.open_file(src)
            for j in range(r.num_record_batches):
                yield r.get_batch(j)
(out / "stats.json").write_text(json.dumps(m.fit_stats(batches(), opts)))
"""


def same_code_command(python: str, modality: str, out: str, files: list[Path]) -> list[str]:
    return [python, "-c", SAME_CODE, modality, out, *map(str, files)]


RAY_PORT = 6391


def ray_head(start: bool) -> None:
    """Start (or stop) a local 2-CPU Ray head outside the timed run (the `-warm` runs; the
    ingest finds it with `--address auto`), its workers at normal priority as the ingest's own
    instances run them (docs/cluster.md). `ray stop` stops every Ray instance of this user on
    the machine: do not run a benchmark beside other Ray jobs."""
    ray = str(Path(sys.executable).with_name("ray"))
    if start:
        cmd = [ray, "start", "--head", "--num-cpus", "2", "--port", str(RAY_PORT),
               "--include-dashboard", "false", "--disable-usage-stats"]  # fmt: skip
    else:
        cmd = [ray, "stop", "--force"]
    env = {**os.environ, "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0")}
    subprocess.run(cmd, check=start, capture_output=True, env=env)


def run_suite(
    runs: dict[str, Callable[[str], list[str]]],
    env: dict[str, str],
    nbytes: int,
    only: list[str] | None = None,
) -> dict[str, dict]:
    """Each run (name -> command writing to the output folder it is given), one after the
    other, each output deleted before the next; a run named `*-warm` gets a Ray head started
    before its clock and stopped after. Prints a line per run; returns their measures (with
    `load_after` and `mb_per_s` of `nbytes` input)."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in runs.items():
            if only and name not in only:
                continue
            out = f"{tmp}/{name}"
            warm = name.endswith("-warm")
            if warm:
                ray_head(start=True)
            try:
                r = results[name] = run_measured(cmd(out), env)
            finally:
                if warm:
                    ray_head(start=False)
            r["load_after"] = os.getloadavg()[0]
            r["mb_per_s"] = nbytes / 1e6 / r["seconds"]
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"{name:12s} {r['seconds']:8.1f} s {r['mb_per_s']:8.1f} MB/s "
                f"peak RSS {r['peak_rss_mb']:8.0f} MiB  (load after {r['load_after']:.2f})",
                flush=True,
            )
    return results


def speedups(results: dict[str, dict], runs: tuple[str, ...], bases: tuple[str, ...]) -> dict:
    """{"RUN vs BASE": time of BASE / time of RUN} for every pair measured; printed."""
    ratios = {}
    for run in runs:
        for base in bases:
            if run in results and base in results:
                ratio = results[base]["seconds"] / results[run]["seconds"]
                ratios[f"{run} vs {base}"] = ratio
                print(f"{run} vs {base}: {ratio:.2f}x (time of {base} / time of {run})")
    return ratios
