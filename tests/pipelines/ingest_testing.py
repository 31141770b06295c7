"""Helpers of the ingest tests (test_ingest.py, test_cluster.py): the --write workers plan run in
one process, and what two datasets are compared by."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from modalities import get_modality
from pipelines import ingest
from pipelines.distributed import plan_groups, write_group
from pipelines.shards import ShardDataset, ShardWriter
from pipelines.sources import list_sources
from pipelines.worker import full_schema, payload_table, read_source

WINDOW = 40  # small windows: several records per demo scan, quick tests


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(root) / "shards").glob("*.arrow"))}


def _plan(inputs: list[str], args: tuple[str, ...]):
    a = ingest.build_parser("fmri").parse_args(["fmri", "--window", str(WINDOW), *args])
    fmri = get_modality("fmri")
    options = fmri.options_from_args(a)
    sources, _ = list_sources(inputs, fmri.matches)
    return a, fmri, options, sources


def plan_in_this_process(inputs: list[str], out: Path, *args: str) -> None:
    """The --write workers plan run group after group in this process, without Ray: the
    one-worker case every cluster must match byte for byte."""
    a, _, options, sources = _plan(inputs, args)
    opts = dataclasses.asdict(options)
    groups = plan_groups([s.size for s in sources], int(a.group_size * 2**20))
    for g, (lo, hi) in enumerate(groups):
        items = [(i, sources[i].path, sources[i].size) for i in range(lo, hi)]
        write_group(
            g, items, str(out), "fmri", opts, a.max_file_bytes, int(a.shard_size * 2**20), None
        )


def driver_plan_in_this_process(inputs: list[str], out: Path, *args: str) -> None:
    """What --write driver writes, without Ray: every source read in plan order, its records
    fed to one shard writer (the reference a killed, resumed or clustered run must equal)."""
    a, fmri, options, sources = _plan(inputs, args)
    opts = dataclasses.asdict(options)
    writer = ShardWriter(out, full_schema(fmri.schema(options)), int(a.shard_size * 2**20))
    for i, s in enumerate(sources):
        row = read_source(i, s.path, s.size, "fmri", opts, a.max_file_bytes)
        if row["status"] == "ok":
            writer.write(payload_table(row["payload"]))
    writer.close()


def records(root: Path | str) -> list[tuple[str, bytes]]:
    ds = ShardDataset(root, verify="all")
    return [(r["id"], r["bold"].tobytes()) for r in (ds[i] for i in range(len(ds)))]
