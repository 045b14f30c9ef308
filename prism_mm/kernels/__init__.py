"""Triton kernels and their plain-PyTorch twins (reference.py). Imports nothing from the rest of prism_mm.

The Triton modules are imported lazily by callers (prism_mm.selection) so that the package works
where Triton is absent.
"""
