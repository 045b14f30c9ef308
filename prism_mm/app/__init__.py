"""The local chat page (issue #37): `python -m prism_mm.app --video clip.mp4`; a thin Gradio front end over
prism_mm.pipelines (pip install 'prism-mm[app]')."""
