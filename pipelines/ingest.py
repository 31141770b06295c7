"""`python -m pipelines.ingest <modality>`: raw files -> an Arrow shard dataset, on Ray Data.

The plan (sorted sources) runs as a Ray Data `map_batches` over one source per task: read and
preprocess on workers, ordered results back to the driver, which cuts shards (pipelines.shards)
and commits the manifest last. With `--write workers` the tasks write the shards themselves, a
group of consecutive sources each, and the driver only journals their metadata and commits
(pipelines.distributed). With `--address` (or RAY_ADDRESS) the job runs on that cluster;
without, it joins a Ray instance already running on this machine (`ray start --head`: no start-up
cost per job) or starts one; `--num-cpus N` always starts a fresh local instance of N CPUs.

Resume: after every committed shard a journal records how far the plan got (sources done, and
records of the current source already in shards). Running the same command again reuses the
committed shards and re-reads only what was not committed, so the result is byte-identical to an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from modalities import Modality, available, get_modality
from pipelines import demo as demo_data
from pipelines.distributed import (
    DEFAULT_GROUP_BYTES,
    GroupError,
    fit_stats_on_worker,
    fit_stats_one_thread,
    iter_shard_batches,
    run_groups,
)
from pipelines.remote import (
    check_writable,
    is_remote,
    remote_files,
    staging_dir,
    upload_dataset,
)
from pipelines.shards import (
    DEFAULT_SHARD_BYTES,
    ERRORS_FILE,
    INDEX_FILE,
    SHARDS_DIR,
    STATS_FILE,
    ShardError,
    ShardInfo,
    ShardWriter,
    atomic_write_bytes,
    atomic_write_json,
    build_manifest,
    commit_manifest,
    json_dumps,
    load_manifest,
    local_path,
    remove_stale_temp_files,
    sha256_file,
)
from pipelines.sources import Source, list_sources
from pipelines.worker import full_schema, payload_table, read_batch

JOURNAL_FILE = ".ingest-journal.json"
DEFAULT_MAX_FILE_BYTES = 16 * 1024**3


class IngestError(Exception):
    """The job as a whole cannot run (bad arguments, an output directory we must not touch)."""


@dataclass
class IngestConfig:
    modality: str
    inputs: list[str]
    output: Path
    options: Any  # the modality's options dataclass
    address: str | None = None
    num_cpus: int | None = None
    shard_bytes: int = DEFAULT_SHARD_BYTES
    compression: str | None = None
    overwrite: bool = False
    strict: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    quiet: bool = False
    # who writes the shards: "driver" (records come back to this process, which cuts shards in
    # plan order) or "workers" (pipelines.distributed: groups of sources, each written by a task)
    write: str = "workers"
    group_bytes: int = DEFAULT_GROUP_BYTES
    # workers mode with an object-store output: the URL the workers write shards to (the
    # journal, stats, errors and manifest stay in `output`, the staging directory)
    shards_url: str | None = None


@dataclass
class IngestResult:
    output: Path | str  # the dataset directory, or the URL it was uploaded to
    sources_ok: int = 0
    sources_quarantined: int = 0
    records: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    input_bytes: int = 0
    resumed: bool = False
    up_to_date: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    # Ray nodes whose workers read this run's sources (a cluster spreads them over several)
    nodes: set[str] = field(default_factory=set)

    def summary(self, modality: str) -> str:
        mbps = self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        extra = " (already complete)" if self.up_to_date else (" (resumed)" if self.resumed else "")
        if len(self.nodes) > 1:
            extra += f", read on {len(self.nodes)} Ray nodes"
        return (
            f"ingest {modality}: {self.sources_ok} sources ok, {self.sources_quarantined} "
            f"quarantined, {self.records} records, {self.shards} shards, "
            f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s, {mbps:.1f} MB/s raw input "
            f"-> {self.output}{extra}"
        )


# --------------------------------------------------------------------------------------------
# the job


def fingerprint(
    cfg: IngestConfig, sources: Sequence[Source], problems: Sequence[str], content: bool = False
) -> str:
    """Identity of a job: what a resume must match. `content=True`: without who writes the
    shards (`write`, `group_bytes`), what makes a finished dataset up to date: the driver and
    the workers write the same records, so a dataset either wrote is this job's."""
    ident = {
        "modality": cfg.modality,
        "options": dataclasses.asdict(cfg.options),
        "sources": [s.to_json() for s in sources],
        "problems": list(problems),
        "shard_bytes": cfg.shard_bytes,
        "compression": cfg.compression,
        "max_file_bytes": cfg.max_file_bytes,
    }
    if cfg.write != "driver" and not content:
        # (a driver-written dataset keeps the identity it always had: its two fingerprints agree)
        ident.update(write=cfg.write, group_bytes=cfg.group_bytes)
    return hashlib.sha256(json_dumps(ident).encode()).hexdigest()


def _prepare_output(cfg: IngestConfig, fp: str, content_fp: str) -> dict[str, Any] | None:
    """Decide what the output directory holds. Returns a journal to resume from, or None.

    Raises IngestError when the directory holds something we must not overwrite, and
    _UpToDate when it already holds this exact job's dataset.
    """
    out = cfg.output
    if cfg.overwrite and out.exists():
        # The manifest goes first: a killed overwrite must not leave an old manifest over
        # new shards.
        (out / INDEX_FILE).unlink(missing_ok=True)
        for name in (JOURNAL_FILE, ERRORS_FILE, STATS_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        remove_stale_temp_files(out)
    out.mkdir(parents=True, exist_ok=True)
    index, journal_path = out / INDEX_FILE, out / JOURNAL_FILE
    if index.exists():
        try:
            manifest = load_manifest(out)
        except ShardError as e:
            raise IngestError(f"{e}; pass --overwrite to replace it") from e
        # (manifests written before the content fingerprint hold a driver job's: the same)
        if manifest.get("content_fingerprint", manifest.get("fingerprint")) == content_fp:
            if _shards_in_place(cfg, manifest):
                raise _UpToDate(manifest)
            # workers wrote the shards to object storage and some are gone: write them again
            index.unlink()
            return None
        raise IngestError(
            f"{out} already holds a dataset built from other inputs or options; "
            "pass --overwrite to replace it, or choose another --output"
        )
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text())
        except ValueError as e:
            raise IngestError(f"{journal_path}: unreadable journal ({e}); use --overwrite") from e
        if journal.get("fingerprint") != fp and journal.get("write", "driver") != cfg.write:
            raise IngestError(
                f"{out} holds an unfinished ingest written by the {journal.get('write', 'driver')}"
                f" (--write {journal.get('write', 'driver')}): run again with that option to "
                "finish it, or pass --overwrite to start over"
            )
        if journal.get("fingerprint") != fp:
            raise IngestError(
                f"{out} holds an unfinished ingest of other inputs or options; "
                "pass --overwrite to start over, or choose another --output"
            )
        return journal
    ours = {SHARDS_DIR, ERRORS_FILE, STATS_FILE}
    foreign = [p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")]
    if foreign:
        raise IngestError(
            f"{out} is not empty and is not a jepa-forge dataset (holds {foreign[0]!r}); "
            "choose an empty or new --output"
        )
    return None


def _shards_in_place(cfg: IngestConfig, manifest: dict[str, Any]) -> bool:
    """Whether the shards the staged manifest lists are all in the bucket the workers wrote
    them to (staged shards, `--write driver`, are the upload's business)."""
    if not cfg.shards_url:
        return True
    present = remote_files(cfg.shards_url, SHARDS_DIR)
    missing = [s["file"] for s in manifest["shards"] if present.get(s["file"]) != s["bytes"]]
    if missing and not cfg.quiet:
        print(
            f"{cfg.shards_url}: {len(missing)} shard(s) missing or altered ({missing[0]}, ...): "
            "writing the dataset again",
            file=sys.stderr,
        )
    return not missing


class _UpToDate(Exception):
    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest


def _restore(out: Path, journal: dict[str, Any]) -> list[ShardInfo]:
    """Committed shards from the journal, checked against the files; orphans removed."""
    shards = []
    for entry in journal["shards"]:
        info = ShardInfo(**entry)
        path = out / info.file
        if (
            not path.is_file()
            or path.stat().st_size != info.bytes
            or sha256_file(path) != (info.sha256)
        ):
            raise IngestError(
                f"{path}: committed shard is missing or altered; pass --overwrite to start over"
            )
        shards.append(info)
    keep = {s.file for s in shards}
    for p in (out / SHARDS_DIR).glob("part-*.arrow"):
        if f"{SHARDS_DIR}/{p.name}" not in keep:
            p.unlink()  # written after the last journal entry: it will be rewritten identically
    return shards


def _write_journal(
    out: Path,
    fp: str,
    shards: Sequence[ShardInfo],
    results: dict[int, dict[str, Any]],
    next_source: int,
    skip_records: int,
) -> None:
    atomic_write_json(
        out / JOURNAL_FILE,
        {
            "fingerprint": fp,
            "shards": [s.to_json() for s in shards],
            "results": {str(k): v for k, v in results.items() if k < next_source},
            "next_source": next_source,
            "skip_records": skip_records,
        },
    )


#: Ray's setting of its workers' niceness (ray._private.ray_constants.RAY_WORKER_NICENESS)
NICENESS_ENV = "RAY_worker_niceness"


def _init_ray(cfg: IngestConfig):
    import logging

    import ray

    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif cfg.num_cpus:
        # a fresh local instance of that size, even beside a running one (which a plain
        # ray.init() would join)
        kwargs.update(address="local", num_cpus=cfg.num_cpus)
    # An instance this job starts runs its workers at the driver's priority. Ray's default, nice
    # 15, leaves them ~3% of a core that any ordinary process also wants (measured: docs/
    # cluster.md). The raylet reads the variable when it starts; a cluster joined keeps its own.
    own_niceness = not address and NICENESS_ENV not in os.environ
    if own_niceness:
        os.environ[NICENESS_ENV] = "0"
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise IngestError(
            f"cannot reach the Ray cluster at {address!r} ({e}); check --address / RAY_ADDRESS "
            "(`ray status` on the head node prints the address to use)"
        ) from None
    finally:
        if own_niceness:
            del os.environ[NICENESS_ENV]
    return ray, True


def run_ingest(cfg: IngestConfig) -> IngestResult:
    """Run one ingest job; see the module docstring."""
    t0 = time.perf_counter()
    modality = get_modality(cfg.modality)
    sources, problems = list_sources(cfg.inputs, modality.matches)
    if not sources:
        detail = "; ".join(problems) if problems else "no inputs given"
        raise IngestError(f"no input files found ({detail})")
    out = cfg.output
    fp = fingerprint(cfg, sources, problems)
    content_fp = fingerprint(cfg, sources, problems, content=True)
    result = IngestResult(output=out)
    try:
        journal = _prepare_output(cfg, fp, content_fp)
    except _UpToDate as done:
        t = done.manifest["totals"]
        result.__dict__.update(
            sources_ok=t["sources_ok"],
            sources_quarantined=t["sources_quarantined"],
            records=t["records"],
            shards=t["shards"],
            bytes=t["bytes"],
            up_to_date=True,
            seconds=time.perf_counter() - t0,
        )
        return result
    remove_stale_temp_files(out)

    schema = full_schema(modality.schema(cfg.options))
    if cfg.write == "workers":
        shards, results, stats = _workers_write(cfg, sources, fp, journal, result)
    else:
        shards, results = _driver_writes(cfg, modality, sources, fp, journal, result)
        ok = any(r["status"] == "ok" for r in results.values())
        batches = iter_shard_batches(out, shards)
        stats = fit_stats_one_thread(modality, batches, cfg.options) if ok else None
    ok = [r for r in results.values() if r["status"] == "ok"]
    if stats is not None:
        atomic_write_json(out / STATS_FILE, stats)
    errors = [
        {"path": sources[i].path, "reason": r["reason"], "exception": r["exception"]}
        for i, r in sorted(results.items())
        if r["status"] != "ok"
    ] + [
        {"path": p.split(": ", 1)[0], "reason": p.split(": ", 1)[-1], "exception": "SourceError"}
        for p in problems
    ]
    atomic_write_bytes(out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors).encode())
    source_rows = [
        {**sources[i].to_json(), "records": r["records"], "status": r["status"]}
        for i, r in sorted(results.items())
    ]
    elapsed = time.perf_counter() - t0
    manifest = build_manifest(
        modality=cfg.modality,
        schema=schema,
        shards=shards,
        sources=source_rows,
        options=dataclasses.asdict(cfg.options),
        library_versions={**_framework_versions(), **modality.library_versions()},
        timing={
            "created_unix": round(time.time(), 3),
            "seconds": round(elapsed, 3),
            "resumed": result.resumed,
        },
    )
    manifest["fingerprint"] = fp
    manifest["content_fingerprint"] = content_fp
    manifest["ingest"] = {
        "shard_bytes": cfg.shard_bytes,
        "compression": cfg.compression,
        "max_file_bytes": cfg.max_file_bytes,
        "input_problems": list(problems),
    }
    commit_manifest(out, manifest)
    (out / JOURNAL_FILE).unlink(missing_ok=True)

    result.sources_ok = len(ok)
    result.sources_quarantined = len(results) - len(ok) + len(problems)
    result.records = sum(s.rows for s in shards)
    result.shards = len(shards)
    result.bytes = sum(s.bytes for s in shards)
    result.errors = errors
    result.seconds = elapsed
    return result


def _driver_writes(
    cfg: IngestConfig,
    modality: Modality,
    sources: Sequence[Source],
    fp: str,
    journal: dict[str, Any] | None,
    result: IngestResult,
) -> tuple[list[ShardInfo], dict[int, dict[str, Any]]]:
    """The driver cuts the shards from records the workers send back (resuming a journal)."""
    out = cfg.output
    results: dict[int, dict[str, Any]] = {}
    shards: list[ShardInfo] = []
    next_source, skip = 0, 0
    if journal is not None:
        shards = _restore(out, journal)
        results = {int(k): v for k, v in journal["results"].items()}
        next_source, skip = journal["next_source"], journal["skip_records"]
        result.resumed = True
    else:
        _write_journal(out, fp, [], {}, 0, 0)  # marks the directory as ours from the start
    schema = full_schema(modality.schema(cfg.options))
    writer = ShardWriter(out, schema, cfg.shard_bytes, cfg.compression, start_index=len(shards))
    writer.shards = list(shards)
    todo = sources[next_source:]
    if todo:
        result.input_bytes = sum(s.size for s in todo)
        _run_plan(cfg, modality, todo, next_source, skip, writer, results, out, fp, result.nodes)
    writer.close()
    return writer.shards, results


def _workers_write(
    cfg: IngestConfig,
    sources: Sequence[Source],
    fp: str,
    journal: dict[str, Any] | None,
    result: IngestResult,
) -> tuple[list[ShardInfo], dict[int, dict[str, Any]], dict[str, Any] | None]:
    """Workers write the shards (pipelines.distributed); stats fitted on a worker too."""
    root = cfg.shards_url or str(cfg.output)
    options = dataclasses.asdict(cfg.options)
    ray, started = _init_ray(cfg)
    try:
        _quiet_ray_data(cfg)
        shards, results, result.resumed, result.input_bytes = run_groups(
            ray,
            sources=sources,
            group_bytes=cfg.group_bytes,
            shards_root=root,
            out=cfg.output,
            journal_file=JOURNAL_FILE,
            fp=fp,
            journal=journal,
            modality_name=cfg.modality,
            options=options,
            max_file_bytes=cfg.max_file_bytes,
            shard_bytes=cfg.shard_bytes,
            compression=cfg.compression,
            quiet=cfg.quiet,
            nodes=result.nodes,
        )
        ok = any(r["status"] == "ok" for r in results.values())
        stats = fit_stats_on_worker(ray, cfg.modality, options, root, shards) if ok else None
    except GroupError as e:
        raise IngestError(f"{e} (the groups already finished are kept for a rerun)") from None
    finally:
        if started:
            ray.shutdown()
    return shards, results, stats


def _quiet_ray_data(cfg: IngestConfig) -> None:
    if cfg.quiet:
        import logging

        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def _run_plan(
    cfg: IngestConfig,
    modality: Modality,
    todo: Sequence[Source],
    first: int,
    skip: int,
    writer: ShardWriter,
    results: dict[int, dict[str, Any]],
    out: Path,
    fp: str,
    nodes: set[str],
) -> None:
    """Read `todo` on Ray (sources numbered from `first`; the first one's `skip` records
    already committed), cut shards from the records in plan order, journal each commit; the
    ids of the nodes that read are added to `nodes`."""
    ray, started = _init_ray(cfg)
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        # Shards must be cut from records in plan order, whatever order workers finish in.
        ctx.execution_options.preserve_order = True
        _quiet_ray_data(cfg)
        _warm_workers(ray, cfg.modality, len(todo))
        items = [{"index": first + i, "path": s.path, "size": s.size} for i, s in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            read_batch,
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
            fn_kwargs={
                "modality_name": cfg.modality,
                "options": dataclasses.asdict(cfg.options),
                "max_file_bytes": cfg.max_file_bytes,
            },
        )
        for row in ds.iter_rows():
            index = int(row["index"])
            payload = row.pop("payload")
            if row["node"]:
                nodes.add(str(row["node"]))
            results[index] = {k: row[k] for k in ("status", "reason", "exception", "records")}
            results[index]["records"] = int(results[index]["records"])
            if row["status"] != "ok":
                if not cfg.quiet:
                    print(
                        f"quarantined {todo[index - first].path}: {row['reason']}", file=sys.stderr
                    )
                continue
            table = payload_table(payload)
            start = skip if index == first else 0
            if start > table.num_rows:
                raise IngestError(
                    f"{todo[index - first].path}: yields {table.num_rows} records now but "
                    f"{start} were committed before; the source changed, use --overwrite"
                )
            table = table.slice(start)
            fed = table.num_rows
            if writer.write(table):
                committed_here = fed - writer.buffered_rows
                if writer.buffered_rows == 0:
                    _write_journal(out, fp, writer.shards, results, index + 1, 0)
                else:
                    _write_journal(out, fp, writer.shards, results, index, start + committed_here)
    finally:
        if started:
            ray.shutdown()


def _warm_workers(ray: Any, modality_name: str, n_sources: int) -> None:
    """Import the modality's readers on the workers while Ray Data starts its plan (~2-3 s).

    Fire and forget: Ray reuses these worker processes for the plan's tasks, whose first file
    then does not pay MNE's or nibabel's imports. A failure here only costs the speed-up.
    """
    n = int(min(n_sources, ray.available_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=0)(_warm_up)
    for _ in range(max(1, n)):
        task.remote(modality_name)


def _warm_up(modality_name: str) -> None:
    get_modality(modality_name).warm_up()


def _framework_versions() -> dict[str, str]:
    import numpy as np

    versions = {
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency; this only guards odd installs
        pass
    return versions


# --------------------------------------------------------------------------------------------
# CLI


def build_parser(modality_name: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description="Turn raw files of one modality into a jepa-forge Arrow shard dataset.",
    )
    p.add_argument("modality", choices=available(), help="which modality to ingest")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="PATH|GLOB|URL",
        help="a file, directory (searched recursively), glob or pyarrow URL; repeatable. "
        "Without it, built-in demo data is generated (cached) and ingested.",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="dataset directory: a local or mounted path, a file:// URL, or an object-store URL "
        "(s3://, gs://, hdfs://: staged locally, then uploaded, the manifest last) (default: "
        "datasets/<modality>)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a Ray instance running on this "
        "machine, else a new local one)",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="start a fresh local Ray instance with this many CPUs (default: join one running "
        "on this machine, or start one with all CPUs)",
    )
    p.add_argument(
        "--shard-size",
        type=float,
        default=DEFAULT_SHARD_BYTES / 2**20,
        metavar="MB",
        help="target shard size in MiB before compression (default: 128)",
    )
    p.add_argument(
        "--write",
        choices=["workers", "driver"],
        default="workers",
        help="who writes the shards: the workers (default), each a group of consecutive sources "
        "straight into the output (on a cluster a path every node mounts, or object storage; "
        "the driver only commits the manifest), or the driver, from records the workers send "
        "back (an output on the driver's disk alone). The same records either way",
    )
    p.add_argument(
        "--group-size",
        type=float,
        default=DEFAULT_GROUP_BYTES / 2**20,
        metavar="MB",
        help="--write workers: input MiB per group, one task each (default: 64). Part of the "
        "dataset's identity, never taken from the cluster's size: any number of workers gives "
        "the same shards",
    )
    p.add_argument(
        "--compression",
        choices=["none", "lz4", "zstd"],
        default="none",
        help="Arrow IPC buffer compression (none keeps shards memory-mappable)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace whatever dataset or unfinished ingest the output holds",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit non-zero when any source is quarantined"
    )
    p.add_argument(
        "--max-file-bytes",
        type=int,
        default=DEFAULT_MAX_FILE_BYTES,
        metavar="N",
        help="refuse sources whose decoded data would exceed N bytes (default 16 GiB)",
    )
    p.add_argument(
        "--demo-n",
        type=int,
        default=None,
        help="number of demo files to generate when no --input is given",
    )
    p.add_argument("--demo-seed", type=int, default=0, help="seed of the demo data")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    if modality_name is not None:
        get_modality(modality_name).add_cli_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The modality's own options are added once we know which modality was asked for.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("modality", nargs="?")
    known, _ = pre.parse_known_args(argv)
    name = known.modality if known.modality in available() else None
    args = build_parser(name).parse_args(argv)
    modality = get_modality(args.modality)
    try:
        options = modality.options_from_args(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # An object-store output: the job runs (and resumes) in a local staging directory, then
    # uploads it, the manifest last; the endpoint, the bucket and write permission are checked
    # before any work.
    remote = args.output if args.output and is_remote(args.output) else None
    try:
        if remote:
            check_writable(remote)
            output = staging_dir(remote)
        else:
            output = local_path(args.output) if args.output else Path("datasets") / args.modality
    except ShardError as e:
        print(f"error: --output {e}", file=sys.stderr)
        return 2
    inputs = list(args.input)
    if not inputs:
        demo_dir = demo_data.ensure_demo(modality, n=args.demo_n, seed=args.demo_seed)
        print(f"no --input given: using demo data in {demo_dir}", file=sys.stderr)
        inputs = [str(demo_dir)]
    cfg = IngestConfig(
        modality=args.modality,
        inputs=inputs,
        output=output,
        options=options,
        address=args.address,
        num_cpus=args.num_cpus,
        shard_bytes=max(1, int(args.shard_size * 2**20)),
        compression=None if args.compression == "none" else args.compression,
        overwrite=args.overwrite,
        strict=args.strict,
        max_file_bytes=args.max_file_bytes,
        quiet=args.quiet,
        write=args.write,
        group_bytes=max(1, int(args.group_size * 2**20)),
        shards_url=remote if args.write == "workers" else None,
    )
    try:
        result = run_ingest(cfg)
        if remote and result.sources_ok:
            n = upload_dataset(output, remote, quiet=cfg.quiet)
            print(f"uploaded {n} shard(s) to {remote} (staged in {output})", file=sys.stderr)
            result.output = remote
    except (IngestError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary(args.modality))
    if result.sources_ok == 0:
        print("error: no source was ingested; see errors.jsonl", file=sys.stderr)
        return 1
    if cfg.strict and result.sources_quarantined:
        print(
            f"error: {result.sources_quarantined} sources quarantined (--strict); "
            f"see {cfg.output / ERRORS_FILE}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
