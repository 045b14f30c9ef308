"""prism_smoke task functions (multiple choice over generated demo clips)."""
import re


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """pre_prompt, the question, its options, post_prompt (the task yaml's lmms_eval_specific_kwargs: lmms-eval gives a
    model the entry named as it is, else the default)."""
    kwargs = lmms_eval_specific_kwargs or {}
    default = "\nAnswer with the option's letter from the given choices directly."
    options = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', default)}"


def doc_to_target(doc):
    return doc["answer"]


def parse_letter(response: str) -> str:
    match = re.search(r"\b([A-D])\b", response.strip().upper())
    return match.group(1) if match else ""


def process_results(doc, results):
    return {"accuracy": float(parse_letter(results[0]) == doc["answer"])}
