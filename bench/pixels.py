"""In-process timings of the pixel paths behind WADO-RS frames and rendered images (no server).

Usage::

    python -m bench.pixels [--runs 50]

* frame index: :func:`storage.frames.index_frames` of a native 20-frame 512x512 16-bit object
  (5 MiB of pixel data), from memory;
* frame read: :func:`storage.frames.read_frame` of each of its 20 frames;
* render: :func:`dicomweb.render.render` to JPEG of pydicom's ``liver_1frame.dcm`` (512x512) and of a
  512x512 CT made from ``CT_small.dcm``.

Each figure is the median of ``--runs`` runs after one warm-up. These were wall-clock assertions in
tests/test_frames.py and tests/test_render.py (index < 50 ms, frame read < 5 ms, render < 100 ms);
the tests now assert what those paths do, this script measures how fast.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from dicomweb.render import render
from storage.frames import index_frames, read_frame

#: what the tests asserted before these became benchmarks (seconds)
FORMER_LIMITS = {"frame index": 0.05, "frame read": 0.005, "render liver 512": 0.1,
                 "render CT 512": 0.1}


def _median(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up (imports, codec set-up)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _multiframe(rows: int = 512, cols: int = 512, frames: int = 20) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.PixelData = np.arange(rows * cols * frames, dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def measure(runs: int) -> dict[str, float]:
    data = _multiframe()
    fp = io.BytesIO(data)
    index = index_frames(fp)
    figures = {
        "frame index": _median(lambda: index_frames(io.BytesIO(data)), runs),
        "frame read": _median(lambda: [read_frame(fp, index, n) for n in range(1, 21)], runs) / 20,
    }
    liver = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"))
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.Rows = ct.Columns = 512
    ct.PixelData = (np.arange(512 * 512, dtype=np.uint16) % 4096).tobytes()
    figures["render liver 512"] = _median(lambda: render(liver), runs)
    figures["render CT 512"] = _median(lambda: render(ct), runs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # pydicom's notes on the test files
    print("| measurement | median ms | former test limit ms |")
    print("|---|---|---|")
    for name, seconds in measure(args.runs).items():
        print(f"| {name} | {seconds * 1000:.2f} | {FORMER_LIMITS[name] * 1000:.0f} |")


if __name__ == "__main__":
    main()
