"""Separable Causal Diffusion (SCD) and the Causal DiT baseline for streaming, action-conditioned video world models.

    model = scd.load_model("crafter-scd")                 # the shipped Crafter SCD (or a checkpoint / run dir)
    for frame in scd.rollout(model, context_frames, actions, steps=20):
        ...                                               # (B, num_samples, C, H, W), one frame at a time

The names below are imported on first use, so `import scd` (and `scd --help`) does not load torch.
"""

import sys
import types
from importlib import import_module

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "load_checkpoint": "checkpoint", "load_model": "checkpoint", "save_checkpoint": "checkpoint",
    "load_codec": "codec",
    "PRESETS": "config", "ModelConfig": "config", "get_preset": "config",
    "FlowConfig": "flow", "flow_matching_loss": "flow",
    "SCD": "models", "CausalDiT": "models", "build_model": "models",
    "Surgery": "surgery", "operated": "surgery",
    "Guidance": "sampling", "Streamer": "sampling", "euler_sample": "sampling", "flow_schedule": "sampling",
    "generate": "sampling", "rollout": "sampling",
    "TrainConfig": "train", "train": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'scd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule scd.train must not hide the function scd.train.
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
