"""Separable Causal Diffusion (SCD) and the Causal DiT baseline for streaming, action-conditioned video world models.

    model = scd.build_model(scd.get_preset("scd-xs"))     # or scd.load_model("runs/scd")
    for frame in scd.rollout(model, context_frames, actions, steps=20):
        ...                                               # (B, num_samples, C, H, W), one frame at a time
"""

from .checkpoint import load_model, save_checkpoint
from .config import PRESETS, ModelConfig, get_preset
from .flow import FlowConfig, flow_matching_loss
from .models import SCD, CausalDiT, Surgery, build_model
from .sampling import Guidance, Streamer, euler_sample, flow_schedule, generate, rollout
from .train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SCD",
    "CausalDiT",
    "FlowConfig",
    "Guidance",
    "ModelConfig",
    "Streamer",
    "Surgery",
    "TrainConfig",
    "build_model",
    "euler_sample",
    "flow_matching_loss",
    "flow_schedule",
    "generate",
    "get_preset",
    "load_model",
    "rollout",
    "save_checkpoint",
    "train",
]
