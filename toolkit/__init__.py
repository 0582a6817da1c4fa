"""EdgeShrink: prune, quantize, convert, verify and benchmark vision models for edge devices.

Public API (imported lazily, so `import toolkit` stays light):

    toolkit.plan(card, target=..., **overrides) -> RunPlan     every check, no work
    toolkit.run(plan) -> Bundle                                 the one runner
    toolkit.shrink(model, target=..., data=..., input_size=..., mean=..., std=...) -> Bundle
"""

__version__ = "0.1.0"

from toolkit.core.errors import EdgeShrinkError  # noqa: E402,F401

_LAZY = {"plan": "toolkit.api", "run": "toolkit.api", "shrink": "toolkit.api", "Bundle": "toolkit.pipeline.manifest",
         "RunPlan": "toolkit.pipeline.plan", "register_task": "toolkit.tasks.registry", "register": "toolkit.models.architectures"}

__all__ = ["EdgeShrinkError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
