"""Write `standard_1005.tsv`: MNE's standard_1005 electrode positions in the head frame.

The reader looks electrode positions up in this table instead of building the montage with MNE in
every worker: it is read in a millisecond, needs no MNE, and keeps positions (and so the shards)
identical across MNE versions (MNE 1.13 renames the montage to colin27_1005). Run it to refresh:

    .venv/bin/python -m modalities.eeg.make_positions
"""

from __future__ import annotations

import warnings
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "standard_1005.tsv"


def main() -> None:
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated name is the stable one
        montage = mne.channels.make_standard_montage("standard_1005")
    info = mne.create_info(montage.ch_names, 128.0, "eeg")
    # set_montage moves the positions into MNE's head frame (origin between the ears, x towards
    # the right ear, y towards the nasion), the frame of a recording's own digitised montage.
    info.set_montage(montage)
    lines = [f"# MNE {mne.__version__} standard_1005 in the head frame, metres", "name\tx\ty\tz"]
    for ch in info["chs"]:
        x, y, z = ch["loc"][:3]
        lines.append(f"{ch['ch_name']}\t{x:.6f}\t{y:.6f}\t{z:.6f}")
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(info['chs'])} positions to {TABLE}")


if __name__ == "__main__":
    main()
