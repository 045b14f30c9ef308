"""Write a synthetic demo clip (a red square moving right, a blue disc moving down) for the video-QA CLI.

    python -m prism_mm.pipelines.demo out.mp4 --seconds 6 --fps 8 --size 224x320
"""
from __future__ import annotations

import argparse

from ..demo_clips import make_demo_video


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--size", default="224x320", help="HEIGHTxWIDTH")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(make_demo_video(args.out, args.seconds, args.fps, h, w))


if __name__ == "__main__":
    main()
