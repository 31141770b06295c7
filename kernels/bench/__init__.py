"""``python -m kernels.bench``: time the kernels against what a JEPA user runs today.

Side by side in one process, at JEPA shapes: varlen attention vs ``scaled_dot_product_attention``
on the padded batch (and ``torch.nn.attention.varlen`` / FlexAttention with a document mask where
they exist); fused EMA vs I-JEPA's per-parameter loop, V-JEPA 2's ``_foreach_mul_`` +
``_foreach_add_`` and ``_foreach_lerp_`` on a real ViT parameter list; token gather vs I-JEPA's
``apply_masks`` and ``index_select``. Each row reports the median time, throughput, its share of
this device's ceilings (a large copy and a large matmul, measured in the same run) and the
speedup over the best baseline. Every case first checks our output against a baseline, so a
broken kernel cannot report a time. On CPU the torch reference paths run at small sizes.

The harness lives apart from the runtime kernels: `timing` (presets, rows, timers, device
ceilings), `baselines` (what users run today), `cases` (one function per kernel), `cli`.
Importing `kernels` never imports this package.
"""

from kernels.bench.cli import main as main
from kernels.bench.timing import measure_ceilings as measure_ceilings
