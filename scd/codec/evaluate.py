"""Reconstruction quality and speed of a codec on recorded frames."""

from __future__ import annotations

import os
import time

import torch

from scd.data.store import VideoStore, frames_to_model
from scd.metrics import lpips, psnr, ssim

from .base import Codec
from .frames import FrameSet


def _synchronize(codec: Codec) -> None:
    if codec.device is not None and codec.device.type == "cuda":
        torch.cuda.synchronize(codec.device)


def evaluate_codec(codec: Codec, data: str | os.PathLike | VideoStore | FrameSet, *, frames: int = 1024,
                   batch: int = 64, perceptual: bool = True) -> dict:
    """Encode and decode `frames` frames spread evenly over `data` (a data set directory or a FrameSet) and score
    the decoded uint8 frames against the originals with scd.metrics: mean per-frame PSNR (dB; inf for an exact
    codec), SSIM and, with `perceptual`, LPIPS (AlexNet; frames of >= 32 px, pretrained weights installed).
    encode_ms / decode_ms: wall-clock milliseconds per frame, uint8 in to latents and latents to uint8 out, in
    batches of `batch` on the codec's device, after one untimed warm-up batch."""
    frameset = data if isinstance(data, FrameSet) else FrameSet(data)
    codec.check_pixel_shape(frameset.pixel_shape)
    indices = frameset.spread(frames)
    codec.decode(codec.encode(frameset.batch(indices[:batch])))  # warm-up: allocations, kernels, caches
    scores = {"psnr": [], "ssim": [], "lpips": []}
    seconds = {"encode": 0.0, "decode": 0.0}
    for real in frameset.batches(indices, batch):  # (n, H, W, 3) uint8
        began = time.perf_counter()
        latents = codec.encode(real[None])
        _synchronize(codec)
        encoded = time.perf_counter()
        decoded = codec.decode(latents)[0]
        _synchronize(codec)
        seconds["encode"] += encoded - began
        seconds["decode"] += time.perf_counter() - encoded
        pred, target = frames_to_model(decoded.cpu())[None], frames_to_model(real)[None]  # (1, n, 3, H, W)
        scores["psnr"].append(psnr(pred, target)[0])
        scores["ssim"].append(ssim(pred, target)[0])
        if perceptual:
            scores["lpips"].append(lpips(pred, target)[0])
    result = {"codec": codec.describe(), "frame_shape": list(codec.frame_shape), "frames": len(indices),
              "params": sum(p.numel() for p in codec.parameters())}
    for name, values in scores.items():
        if values:
            result[name] = torch.cat(values).mean().item()
    for name, total in seconds.items():
        result[f"{name}_ms"] = 1000 * total / len(indices)
    return result
