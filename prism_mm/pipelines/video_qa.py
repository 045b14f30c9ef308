"""Video QA CLI. Not built yet: the transformers integration and video pipeline land next."""
import sys


def main() -> int:
    print("prism_mm.pipelines.video_qa is not built yet (see issue: Long-video QA pipeline and CLI). "
          "The attention core is usable today: prism_mm.prism_attention(q, k, v, PrismConfig()).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
