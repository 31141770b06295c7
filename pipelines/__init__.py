"""Pipelines: raw files -> Arrow shard datasets.

- `shards`: the shard format (writer, reader, manifest). Imports only pyarrow and numpy, so
  anything may read datasets without Ray.
- `sources`: listing local files, directories, globs and pyarrow URLs.
- `ingest`: the `python -m pipelines.ingest <modality>` CLI on Ray Data; `worker` is the
  per-source step it runs on Ray workers; `demo` caches built-in demo data.

May import `modalities`; never imports `engine` or `kernels`.
"""
