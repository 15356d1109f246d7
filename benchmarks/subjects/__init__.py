"""The suite's subjects: one module each, looked up by name (see ``benchmarks/run.py`` for the interface)."""

import importlib
from types import ModuleType

# name -> module in this package, in running order
SUBJECTS: dict[str, str] = {
    "flash-layer": "flash_layer",
    "mixed-chunk-attn": "mixed_chunk_attn",
    "quad-attn": "quad_attn",
    "gau-layer": "gau_layer",
    "model-step": "model_step",
    "decode": "decode",
}


def load(name: str) -> ModuleType:
    """The module of subject ``name`` (KeyError for an unknown name)."""
    return importlib.import_module(f"{__name__}.{SUBJECTS[name]}")
