"""Workers write the shards (`pipelines.ingest --write workers`): the driver only plans and commits.

The plan cuts the sorted sources into groups: runs of consecutive sources, each closed once it
holds `group_bytes` of input (a function of the source list alone, never of how many workers or
nodes run it). One Ray task per group reads its sources in order and cuts its own shards,
`shards/part-GGGGG-NNNN.arrow`, straight into the output: a local or shared path (atomic
renames), or an object store (each shard staged in the worker's temp directory and uploaded
whole). So a shard's bytes depend only on its group's sources and the options, and the dataset's
record order is the plan's, as when the driver writes.

The driver receives metadata only (shard names, sizes, hashes; each source's status), so its
memory does not grow with the data. After each finished group it journals the group; a killed
job run again keeps the finished groups (their shards checked against the journal) and redoes
the rest, whose partial shards it removes. The dataset statistics are fitted by one more task
that streams the shards where they lie, and the manifest is committed last, by the driver.

A task lost with its worker or node is retried by Ray (its rewrite gives the same bytes under the
same names); an error no retry cures (an output the workers cannot write) stops the job with the
group and the reason, keeping what was journalled.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.remote import delete_file, open_remote_file, remote_files, upload_file
from pipelines.shards import (
    SHARDS_DIR,
    ShardInfo,
    ShardWriter,
    atomic_write_json,
    is_remote,
    sha256_file,
)
from pipelines.sources import Source
from pipelines.worker import full_schema, node_id, payload_table, read_source

DEFAULT_GROUP_BYTES = 64 * 1024**2
# Ray retries a group whose worker or node died this many times before the job fails.
TASK_RETRIES = 3
# The driver's object-store settings the tasks see (endpoint, region, credentials, retries):
# worker processes start with the cluster's environment, not the shell that ran the ingest.
FORWARDED_ENV = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "JEPA_FORGE_")


def task_options(root: str) -> dict[str, Any]:
    """Ray options of the tasks that write or read `root`."""
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": TASK_RETRIES}
    if is_remote(root):
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        if env:
            opts["runtime_env"] = {"env_vars": env}
    return opts


def plan_groups(sizes: Sequence[int], group_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive sources, each closed once it holds `group_bytes` of
    input (a source larger than that is a group of its own)."""
    if group_bytes <= 0:
        raise ValueError("group_bytes must be positive")
    groups, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        acc += int(n)
        if acc >= group_bytes:
            groups.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(sizes):
        groups.append((start, len(sizes)))
    return groups


# --------------------------------------------------------------------------------------------
# worker side


def write_group(
    group: int,
    items: list[tuple[int, str, int]],
    shards_root: str,
    modality_name: str,
    options: dict[str, Any],
    max_file_bytes: int,
    shard_bytes: int,
    compression: str | None,
) -> dict[str, Any]:
    """Read a group's sources (index, path, size) in order and write its shards under
    `shards_root` (a dataset directory or URL); returns their metadata and each source's
    status. Per-source failures are quarantined; a failure to write raises."""
    from modalities import get_modality

    modality = get_modality(modality_name)
    schema = full_schema(modality.schema(modality.options_type(**options)))
    remote = is_remote(shards_root)
    root = Path(tempfile.mkdtemp(prefix="jepa-forge-group-")) if remote else Path(shards_root)
    results: dict[str, dict[str, Any]] = {}
    try:
        writer = ShardWriter(root, schema, shard_bytes, compression, group=group)

        def publish(infos: list[ShardInfo]) -> None:
            if remote:
                for info in infos:
                    upload_file(root / info.file, shards_root, info.file)
                    (root / info.file).unlink()

        for index, path, size in items:
            row = read_source(
                index, path, size, modality_name, options, max_file_bytes=max_file_bytes
            )
            payload = row.pop("payload")
            results[str(index)] = {k: row[k] for k in ("status", "reason", "exception", "records")}
            if row["status"] == "ok":
                publish(writer.write(payload_table(payload)))
            del payload
        last = writer.flush()
        if last is not None:
            publish([last])
        return {
            "group": group,
            "shards": [s.to_json() for s in writer.shards],
            "results": results,
            "node": node_id(),
        }
    finally:
        if remote:
            shutil.rmtree(root, ignore_errors=True)


def iter_shard_batches(root: str | Path, shards: Sequence[ShardInfo]) -> Iterator[pa.RecordBatch]:
    """The record batches of `shards` in order, read where they lie (a path or a URL)."""
    for s in shards:
        if is_remote(str(root)):
            src = open_remote_file(str(root), s.file)
        elif s.compression is None:
            src = pa.memory_map(str(Path(root) / s.file))
        else:
            src = pa.OSFile(str(Path(root) / s.file))
        with src:
            reader = pa.ipc.open_file(src)
            for j in range(reader.num_record_batches):
                yield reader.get_batch(j)


def fit_stats_one_thread(modality: Any, batches: Any, opts: Any) -> dict[str, Any]:
    """`modality.fit_stats` with BLAS held to one thread: multithreaded BLAS rounds its sums
    differently by thread count, and the statistics must be the same bits whichever process fits
    them (the driver with all its cores, a Ray worker with one, another machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return modality.fit_stats(batches, opts)


def fit_stats_task(
    modality_name: str, options: dict[str, Any], root: str, shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """The dataset statistics, fitted on a worker by streaming the written shards."""
    from modalities import get_modality

    modality = get_modality(modality_name)
    infos = [ShardInfo(**s) for s in shards]
    opts = modality.options_type(**options)
    return fit_stats_one_thread(modality, iter_shard_batches(root, infos), opts)


# --------------------------------------------------------------------------------------------
# driver side


class GroupError(Exception):
    """A group failed in a way no retry cures, or a journalled group's shards are gone."""


def _journal(out: Path, journal_file: str, fp: str, done: dict[int, dict[str, Any]]) -> None:
    atomic_write_json(
        out / journal_file,
        {"fingerprint": fp, "write": "workers", "groups": {str(g): d for g, d in done.items()}},
    )


def _check_done(
    done: dict[int, dict[str, Any]], shards_root: str, out: Path
) -> dict[int, dict[str, Any]]:
    """The journalled groups whose shards are all present (sha256 locally, size in object
    storage); a group with a shard missing or altered is redone."""
    sizes = remote_files(shards_root, SHARDS_DIR) if is_remote(shards_root) else None
    kept = {}
    for g, d in done.items():
        ok = True
        for s in d["shards"]:
            if sizes is not None:
                ok = sizes.get(s["file"]) == int(s["bytes"])
            else:
                p = out / s["file"]
                ok = p.is_file() and p.stat().st_size == s["bytes"]
                ok = ok and sha256_file(p) == s["sha256"]
            if not ok:
                break
        if ok:
            kept[g] = d
    return kept


def remove_strays(shards_root: str, out: Path, keep: set[str]) -> int:
    """Remove shard files the final list does not name (a killed job's partial groups)."""
    n = 0
    if is_remote(shards_root):
        for rel in remote_files(shards_root, SHARDS_DIR):
            if rel not in keep:
                delete_file(shards_root, rel)
                n += 1
        return n
    for p in (out / SHARDS_DIR).glob("part-*.arrow"):
        if f"{SHARDS_DIR}/{p.name}" not in keep:
            p.unlink()
            n += 1
    return n


def _check_visible(
    meta: dict[str, Any], shards_root: str, out: Path, pending: dict, ray: Any
) -> None:
    """A group's shards must be where the driver looks: on a cluster whose nodes do not share
    the output path, a worker's shards land on its own disk, out of the driver's reach."""
    if is_remote(shards_root):
        return
    for s in meta["shards"]:
        p = out / s["file"]
        if not (p.is_file() and p.stat().st_size == int(s["bytes"])):
            for ref in pending:
                ray.cancel(ref)
            raise GroupError(
                f"group {meta['group']}'s shard {s['file']}, written on Ray node "
                f"{meta['node'] or '?'}, is not at {p} on the driver's machine: with --write "
                "workers the output must be a filesystem every node mounts at the same path, or "
                "object storage (s3://, gs://); or use --write driver"
            )


def run_groups(
    ray: Any,
    *,
    sources: Sequence[Source],
    group_bytes: int,
    shards_root: str,
    out: Path,
    journal_file: str,
    fp: str,
    journal: dict[str, Any] | None,
    modality_name: str,
    options: dict[str, Any],
    max_file_bytes: int,
    shard_bytes: int,
    compression: str | None,
    quiet: bool,
    nodes: set[str],
) -> tuple[list[ShardInfo], dict[int, dict[str, Any]], bool, int]:
    """Run the groups not yet done on Ray (`ray` initialised by the caller); returns the shards
    in record order, each source's result by plan index, whether the job resumed, and the
    input bytes this run read."""
    plan = plan_groups([s.size for s in sources], group_bytes)
    done: dict[int, dict[str, Any]] = {}
    if journal is not None and journal.get("write") == "workers":
        done = _check_done({int(g): d for g, d in journal["groups"].items()}, shards_root, out)
    resumed = bool(done)
    _journal(out, journal_file, fp, done)
    todo = [g for g in range(len(plan)) if g not in done]
    todo_bytes = sum(sources[i].size for g in todo for i in range(*plan[g]))
    if not quiet:
        print(
            f"{len(sources)} sources in {len(plan)} groups of ~{group_bytes / 2**20:.3g} MiB "
            f"input, written by the workers to {shards_root}"
            + (f" ({len(done)} groups already done)" if done else ""),
            file=sys.stderr,
            flush=True,
        )
    task = ray.remote(**task_options(shards_root))(write_group)
    pending = {}
    for g in todo:
        a, b = plan[g]
        items = [(i, sources[i].path, sources[i].size) for i in range(a, b)]
        ref = task.remote(
            g,
            items,
            shards_root,
            modality_name,
            options,
            max_file_bytes,
            shard_bytes,
            compression,
        )
        pending[ref] = g
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        g = pending.pop(ready[0])
        try:
            meta = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - report which group, keep what is journalled
            for ref in pending:
                ray.cancel(ref)
            cause = getattr(e, "cause", None) or e
            raise GroupError(
                f"group {g} (sources {plan[g][0]}..{plan[g][1] - 1}, first "
                f"{sources[plan[g][0]].path}) failed: {type(cause).__name__}: {cause}"
            ) from None
        if meta["node"]:
            nodes.add(meta["node"])
        _check_visible(meta, shards_root, out, pending, ray)
        done[g] = {"shards": meta["shards"], "results": meta["results"]}
        _journal(out, journal_file, fp, done)
        if not quiet:
            for i, r in sorted(meta["results"].items(), key=lambda kv: int(kv[0])):
                if r["status"] != "ok":
                    print(f"quarantined {sources[int(i)].path}: {r['reason']}", file=sys.stderr)
            print(
                f"group {g} done: {len(meta['shards'])} shard(s) [{len(done)}/{len(plan)} groups]",
                file=sys.stderr,
                flush=True,
            )
    shards: list[ShardInfo] = []
    results: dict[int, dict[str, Any]] = {}
    for g in range(len(plan)):
        shards += [ShardInfo(**s) for s in done[g]["shards"]]
        for i, r in done[g]["results"].items():
            results[int(i)] = {**r, "records": int(r["records"])}
    remove_strays(shards_root, out, {s.file for s in shards})
    return shards, results, resumed, todo_bytes


def fit_stats_on_worker(
    ray: Any, modality_name: str, options: dict[str, Any], root: str, shards: Sequence[ShardInfo]
) -> dict[str, Any]:
    task = ray.remote(**task_options(root))(fit_stats_task)
    return ray.get(task.remote(modality_name, options, root, [s.to_json() for s in shards]))
