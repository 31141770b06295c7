"""engine: JEPA pretraining on jepa-forge shard datasets.

config (typed config), data (order, sharding, masking collation, resumable loader), model
(encoder / predictor on packed variable-length tokens), graphs (CUDA graphs of the step and
the target encoder), objective (loss, collapse monitor),
schedules, launch (process group), trainer + train (DeepSpeed loop, `python -m engine.train`),
checkpoint (atomic, exact resume), metrics, probe (`python -m engine.probe`), export
(`python -m engine.export`), ops (the kernels used).

May import `modalities`, `kernels` and `pipelines.shards` only (never Ray or the rest of
`pipelines`). Importing any module here has no side effects; DeepSpeed is imported by the
trainer after `launch.setup_distributed()` has chosen its accelerator.
"""
