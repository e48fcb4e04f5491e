"""Rendering speed of the synthetic benchmark: frames per second of one sequence per preset, on one core.

Prints one line per preset and, last, one JSON line. About 0.5 s per 100 hard frames at 320 x 240 here.
"""
from __future__ import annotations

import argparse
import json
import time

import cv2

from ct_ray.data.synth import PRESETS, render_sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    figures = {}
    for preset in sorted(PRESETS):
        start = time.perf_counter()
        render_sequence(0, preset, args.frames, (args.height, args.width))
        figures[preset] = args.frames / (time.perf_counter() - start)
        print(f"{preset:<9} {figures[preset]:7.1f} frames/s ({args.width}x{args.height}, one core)")
    print(json.dumps({"frames_per_s": {k: round(v, 1) for k, v in figures.items()}, "frames": args.frames,
                      "size": [args.height, args.width]}))


if __name__ == "__main__":
    main()
