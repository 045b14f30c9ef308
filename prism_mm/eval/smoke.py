"""An offline lmms-eval smoke task: multiple-choice questions about generated demo clips, several per clip and
listed clip by clip, as VideoMME lists its 3 questions per video.

    python -m prism_mm.eval.smoke TASK_DIR      # then: lmms-eval ... --tasks prism_smoke --include_path TASK_DIR
"""
from __future__ import annotations

import json
import shutil
import sys
from importlib import resources
from pathlib import Path

from ..demo_clips import make_demo_video

QUESTIONS = [
    ("Which way does the red square move?", ["left", "right", "up", "down"], "B"),
    ("Which way does the blue disc move?", ["left", "right", "up", "down"], "D"),
    ("How many moving shapes are there?", ["one", "two", "three", "four"], "B"),
]

YAML = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
task: prism_smoke
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
process_results: !function utils.process_results
lmms_eval_specific_kwargs:  # lmms-eval gives a model the entry named as it is (as VideoMME has one for qwen3_vl)
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer with the option's letter from the given choices directly."
  qwen3_vl:
    pre_prompt: "Question: "
    post_prompt: "\\nAnswer with the option letter only."
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""


def write_smoke_task(task_dir: str | Path, videos: int = 2, seconds: float = 4.0) -> Path:
    """Write prism_smoke.yaml, utils.py, smoke.json and `videos` demo clips into task_dir; smoke.json lists each
    clip's len(QUESTIONS) questions one after another."""
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    docs = []
    for v in range(videos):
        clip = make_demo_video(task_dir / f"demo_{v}.mp4", seconds=seconds, fps=8, height=112, width=168, seed=v)
        for q, (question, options, answer) in enumerate(QUESTIONS):
            docs.append({"id": f"{v}-{q}", "video": str(clip), "question": question, "options": options, "answer": answer})
    data = task_dir / "smoke.json"
    data.write_text(json.dumps(docs, indent=1))
    (task_dir / "prism_smoke.yaml").write_text(YAML.format(data=data))
    template = resources.files("prism_mm.eval").joinpath("smoke_template/utils.py")
    with resources.as_file(template) as src:
        shutil.copy(src, task_dir / "utils.py")
    return task_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m prism_mm.eval.smoke TASK_DIR")
    print(write_smoke_task(sys.argv[1]))
