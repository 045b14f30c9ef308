"""Chat with a video in the browser.

    python -m prism_mm.app [--model M ...] [--device D] [--video FILE ...] [--host 127.0.0.1] [--port N]

Serves a local page: choose one of the --video files or upload one; its prefix (decoding, vision tower, decoder
prefill) builds at once, then ask questions. Answers stream with their first-token time, tokens per second, mean
Prism density and whether the video's prefix was reused; prism / dense can be switched or compared side by side.
`tiny-qwen2.5-vl` (and tiny-qwen3-vl, tiny-qwen2-vl) run on a CPU with meaningless answers. The page reads no file of
this machine but the --video files and its own uploads.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..pipelines.session import DEFAULT_MODEL, check_device
from ..pipelines.video import VideoError, probe


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prism_mm.app", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append",
                    help=f"hub id, local directory or tiny-qwen2.5-vl; several times: the page offers each, the first "
                         f"chosen (default {DEFAULT_MODEL})")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--video", nargs="+", action="extend", default=[], metavar="FILE",
                    help="video files the page offers (others can be uploaded)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload accepted, in MB (default 1024)")
    ap.add_argument("--max-seconds", type=float, default=1800, help="longest video accepted, in seconds (default 1800)")
    ap.add_argument("--random-weights", action="store_true", help="shipped architectures, random weights (speed runs)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import gradio
    except ImportError:
        print("error: the chat page needs gradio: pip install 'prism-mm[app]'", file=sys.stderr)
        return 2
    from .page import build_page

    try:
        device = check_device(args.device)
        for path in args.video:
            probe(path)
        if args.max_upload_mb < 1 or args.max_seconds <= 0:
            raise ValueError("--max-upload-mb must be >= 1 and --max-seconds > 0")
    except (VideoError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = build_page(args.model or [DEFAULT_MODEL], [os.path.abspath(v) for v in args.video], device,
                      args.max_seconds, args.random_weights)
    system_fonts = gradio.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                         font_mono=["ui-monospace", "monospace"])  # no font fetched from the web
    page.queue().launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload_mb * 1024 ** 2,
                        theme=system_fonts, ssr_mode=False, footer_links=[], mcp_server=False, pwa=False,
                        enable_monitoring=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
