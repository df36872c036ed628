"""fsx: an experiment runner for few-shot object detection.

From Python, the CLI's verbs are functions taking the same Hydra overrides (fsx/api.py):

    import fsx
    result = fsx.pretrain("algorithm=reptile", "train.steps=100")
"""

from fsx.errors import UsageError

__version__ = "0.1.0"

_VERBS = ("pretrain", "adapt", "evaluate", "detect", "acquire", "loop", "export")


def __getattr__(name: str):
    # the verbs import torch and mlflow (seconds): only when first used, so `import fsx` and
    # the CLI's --help stay instant
    if name in _VERBS:
        from fsx import api

        return getattr(api, name)
    raise AttributeError(f"module 'fsx' has no attribute {name!r}")


__all__ = ["UsageError", "__version__", *_VERBS]
