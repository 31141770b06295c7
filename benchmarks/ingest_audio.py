"""Benchmark: `pipelines.ingest audio` (Ray Data, 2 CPUs) vs single-process loops, on FLAC.

On one synthetic cohort of >= 500 MB of FLAC (10-minute stereo files at 44.1 kHz, 16-bit, of
modalities.audio.demo's note pairs over a noise floor), measured in one run, each as its own
process tree:

  (a)  ingest        `python -m pipelines.ingest audio --num-cpus 2` (Ray Data, 2 CPUs; default
                     options: 16 kHz mono, 128-bin Kaldi log-mel, 1024-frame segments), including
                     Ray's start-up and the dataset statistics
  (b)  same-code     one process running our reader, shard writer and statistics with no Ray
  (c)  librosa-loop  the loop a user writes today, one process: librosa.load(sr=16000,
                     mono=True, res_type="soxr_hq"), librosa.feature.melspectrogram (512-point
                     FFT, 400-sample window, 160 hop, 128 HTK mel bins), log, 1024-frame
                     segments as float16, written as Arrow IPC
  (d)  decode-floor  FLAC decoding alone (soundfile.read) in 2 processes: the least work any
                     ingest of these files does
  (e)  ingest-warm   (a) against a Ray instance already running (`ray start --head --num-cpus 2`
                     before the clock starts, `--address` to it): what a user who keeps one up
                     pays, without Ray's start and stop

Reports wall seconds, MB/s of FLAC input, the ratios, and the peak RSS of each whole process
tree (sampled every 0.1 s). Each output is deleted before the next run starts. Results go to
stdout and, with --json, to a file; docs/benchmarks.md records them with the exact command.

    .venv/bin/python benchmarks/ingest_audio.py --mb 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# benchmarks/kernels.py would shadow the `kernels` package: import measure, then drop this folder
sys.path.insert(0, str(HERE))
from measure import run_suite, same_code_command, speedups  # noqa: E402

sys.path.remove(str(HERE))

FILE_S = 600.0
RATE = 44100


def make_cohort(root: Path, mb: float, seed: int) -> list[Path]:
    """Generate (or reuse) 10-minute stereo FLAC files adding up to at least `mb` MB."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import soundfile as sf

    from modalities.audio.demo import DIRECTIONS, SOUNDS, synthesize

    marker = root / f".complete-{mb}-{seed}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        total, n = 0, 0
        while total < mb * 1e6:
            rng = np.random.default_rng([seed, n])
            y = synthesize(rng, SOUNDS[n % 4], DIRECTIONS[n % 2], FILE_S, RATE) * 0.7
            stereo = np.stack([y, y * 0.9 + 0.01 * rng.standard_normal(len(y))], axis=1)
            path = root / f"take-{n:03d}.flac"
            sf.write(path, stereo.astype(np.float32), RATE, subtype="PCM_16")
            total += path.stat().st_size
            n += 1
            print(f"  generated {total / 1e6:.0f} MB", file=sys.stderr, flush=True)
        marker.write_text("ok")
    return sorted(root.glob("*.flac"))


LIBROSA_LOOP = r"""
import sys, pathlib, numpy as np, pyarrow as pa, librosa
out, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
out.mkdir(parents=True)
seg = 1024
writer = None
for f in files:
    y, sr = librosa.load(f, sr=16000, mono=True, res_type="soxr_hq")
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, win_length=400, hop_length=160,
                                         n_mels=128, htk=True, norm=None, center=False)
    logmel = np.log(np.maximum(mel, 1.1920929e-07)).astype(np.float16)
    n = logmel.shape[1]
    starts = list(range(0, n, seg))
    cells = []
    for s in starts:
        piece = logmel[:, s:s + seg]
        if piece.shape[1] < seg:
            piece = np.pad(piece, ((0, 0), (0, seg - piece.shape[1])), constant_values=-15.9)
        cells.append(np.ascontiguousarray(piece).ravel())
    table = pa.table({"source": [f] * len(starts), "offset_frames": starts,
                      "mel": pa.FixedSizeListArray.from_arrays(np.concatenate(cells), 128 * seg)})
    if writer is None:
        writer = pa.ipc.new_file(str(out / "part-0.arrow"), table.schema)
    writer.write_table(table)
writer.close()
"""

DECODE_FLOOR = r"""
import sys
from multiprocessing import Pool
import soundfile as sf
def frames(f):
    return len(sf.read(f, dtype="float32")[0])
if __name__ == "__main__":
    with Pool(2) as pool:
        print(sum(pool.map(frames, sys.argv[2:], chunksize=1)))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=float, default=500.0, help="cohort size in MB of FLAC")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cohort", type=Path, default=Path(tempfile.gettempdir()) / "jf-bench-audio")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="subset of: ingest same-code librosa-loop decode-floor",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    files = make_cohort(args.cohort, args.mb, args.seed)
    nbytes = sum(f.stat().st_size for f in files)
    print(f"cohort: {len(files)} FLAC files, {nbytes / 1e6:.0f} MB in {args.cohort}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {
        "ingest": lambda out: [py, "-m", "pipelines.ingest", "audio", "--input", str(args.cohort),
                               "--output", out, "--num-cpus", "2", "--quiet"],
        "same-code": lambda out: same_code_command(py, "audio", out, files),
        "librosa-loop": lambda out: [py, "-c", LIBROSA_LOOP, out, *map(str, files)],
        "decode-floor": lambda out: [py, "-c", DECODE_FLOOR, out, *map(str, files)],
        "ingest-warm": lambda out: [py, "-m", "pipelines.ingest", "audio", "--input",
                                    str(args.cohort), "--output", out, "--address", "auto",
                                    "--quiet"],
    }  # fmt: skip
    results = run_suite(runs, env, nbytes, args.only)
    ratios = speedups(
        results, ("ingest", "ingest-warm"), ("same-code", "librosa-loop", "decode-floor")
    )
    if "ingest" in results:
        print(f"ingest summary: {results['ingest']['stdout']}")
    if args.json:
        payload = {"files": len(files), "bytes": nbytes, "results": results, "speedups": ratios,
                   "cpus": os.cpu_count()}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
