"""lmms-eval integration: the `prism_qwen_vl` model (registered through the `lmms_eval.models`
entry-point group, see pyproject.toml) and an offline smoke task (prism_mm.eval.smoke)."""


def manifest():
    """Entry point payload for lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="prism_qwen_vl", simple_class_path="prism_mm.eval.model.PrismQwenVL")
