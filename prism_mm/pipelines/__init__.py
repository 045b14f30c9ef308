"""Video decoding and the video-QA CLI (python -m prism_mm.pipelines.video_qa)."""
