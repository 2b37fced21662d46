"""The frame codec seam: what a world model's frames are, and how uint8 game frames get there and back.

A codec maps uint8 RGB frames (..., H, W, 3) to the model's frames (..., C, h, w) and back. Subclasses define
only the float maps `encode_float` / `decode_float` on (N, 3, H, W) pixels in [-1, 1]; the conversions from
and to uint8 (scd.data.store.frames_to_model / frames_to_uint8) and the checks live here, once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from scd.config import SHIPPED_CODECS
from scd.data.store import frames_to_model, frames_to_uint8

CODEC_FORMAT = "scd-codec-v1"  # config.json "format" of a saved codec (scd.codec.autoencoder)
# Keys of a codec record that say where it was loaded from, not what it computes.
LOCATION_KEYS = ("path", "sha256", "source", "weights", "fingerprint")


def _shape(value, what: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{what} must be three positive sizes, got {value!r}")
    return shape


def _size(shape) -> str:
    return "x".join(map(str, shape))


class Codec(torch.nn.Module):
    """uint8 frames (..., H, W, 3) <-> model frames (..., C, h, w).

    `pixel_shape` (H, W, 3): the frames it takes; `frame_shape` (C, h, w): one frame in the model's space (what
    ModelConfig.frame_shape must be). `to_dict()` is what a world-model checkpoint records and `load_codec` reads
    back. encode/decode run without gradients on the codec's device (a codec without weights: the input's)."""

    kind = ""

    def __init__(self, pixel_shape):
        super().__init__()
        self.pixel_shape = _shape(pixel_shape, "pixel_shape")
        if self.pixel_shape[2] != 3:
            raise ValueError(f"pixel_shape must be (H, W, 3) for RGB frames, got {self.pixel_shape}")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, h, w)."""
        raise NotImplementedError

    def decode_float(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, 3, H, W), about [-1, 1] (clamped on the way to uint8)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pixel_shape": list(self.pixel_shape), "frame_shape": list(self.frame_shape)}

    def describe(self) -> str:
        return f"{self.kind} codec: {_size(self.pixel_shape)} frames <-> {_size(self.frame_shape)} (C, h, w)"

    @property
    def device(self) -> torch.device | None:
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return None

    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (..., H, W, 3) -> float32 (..., C, h, w)."""
        frames = self.check_pixels(frames)
        lead = frames.shape[:-3]
        x = frames_to_model(frames.reshape(-1, *self.pixel_shape))  # (N, 3, H, W) in [-1, 1]
        z = self.encode_float(x.to(self.device or x.device))
        return z.float().reshape(*lead, *self.frame_shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float (..., C, h, w) -> uint8 (..., H, W, 3) on the latents' device: decode_pixels, rounded."""
        return torch.from_numpy(frames_to_uint8(self.decode_pixels(latents))).to(latents.device)

    @torch.no_grad()
    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """float (..., C, h, w) -> float32 pixels (..., 3, H, W) clamped to [-1, 1], not rounded, on the latents'
        device: what the metrics score (for the pixel codec exactly the clamped frames)."""
        self.check_latents(latents)
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *self.frame_shape).to(self.device or latents.device, torch.float32)
        pixels = self.decode_float(z).float().clamp(-1.0, 1.0)
        return pixels.reshape(*lead, 3, *self.pixel_shape[:2]).to(latents.device)

    def as_pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (..., 3, H, W) to score: uint8 game frames (..., H, W, 3) as they are, float frames
        (..., C, h, w) in this codec's space decoded (decode_pixels)."""
        if isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8:
            return frames_to_model(self.check_pixels(frames))
        return self.decode_pixels(frames)

    def fingerprint(self) -> str:
        """sha256 of what the codec computes: its record (without where it was loaded from) and its tensors. Two
        codecs with the same fingerprint give the same latents; it keys the latent caches of data sets."""
        record = {k: v for k, v in self.to_dict().items() if k not in LOCATION_KEYS}
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
        for name, tensor in self.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- checks -------------------------------------------------------------------------------------------------
    def check_pixels(self, frames) -> torch.Tensor:
        """uint8 frames (..., H, W, 3) of this codec's size, as a tensor; ValueError naming the problem."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.array(frames))  # a copy: memory maps are read-only
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"{self.kind} codec: frames must be a uint8 tensor or array, got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"{self.kind} codec: frames must be uint8 (..., H, W, 3), got dtype {frames.dtype}")
        if frames.ndim < 4 or tuple(frames.shape[-3:]) != self.pixel_shape:
            raise ValueError(f"{self.kind} codec is for {_size(self.pixel_shape)} frames, got frames of shape "
                             f"{tuple(frames.shape)} (expected (..., {', '.join(map(str, self.pixel_shape))}))")
        return frames

    def check_latents(self, latents) -> None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            what = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"{self.kind} codec: latents must be a float tensor (..., C, h, w), got {what}")
        if latents.ndim < 4 or tuple(latents.shape[-3:]) != self.frame_shape:
            raise ValueError(f"{self.kind} codec decodes {_size(self.frame_shape)} latents (C, h, w), got shape "
                             f"{tuple(latents.shape)}")

    def check_frame_shape(self, frame_shape, what: str = "the model") -> None:
        """A world model (ModelConfig.frame_shape) must work in this codec's space."""
        if tuple(frame_shape) != self.frame_shape:
            raise ValueError(f"{what} works on frames of shape {_size(frame_shape)} (C, h, w) but the "
                             f"{self.describe()}")

    def check_pixel_shape(self, pixel_shape, what: str = "the data") -> None:
        """Data (VideoStore.frame_shape, (H, W, 3)) must have this codec's frame size."""
        if tuple(pixel_shape) != self.pixel_shape:
            raise ValueError(f"{what} has {_size(pixel_shape)} frames but the {self.describe()}")


class PixelCodec(Codec):
    """Pixels as they are: uint8 -> float in [-1, 1], (3, H, W), and back with rounding and clamping (exactly
    scd.data.store.frames_to_model / frames_to_uint8). The default codec."""

    kind = "pixel"

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w, c = self.pixel_shape
        return (c, h, w)

    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode_float(self, z: torch.Tensor) -> torch.Tensor:
        return z


def load_codec(spec: Codec | dict | str | os.PathLike, *, pixel_shape=None, root: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> Codec:
    """A codec from what describes it:
    - a Codec (returned as it is);
    - a dict from Codec.to_dict() (a world-model checkpoint's record); a relative "path" is taken from `root`;
    - "pixel": a PixelCodec of `pixel_shape`; "crafter": the shipped Crafter autoencoder (config.SHIPPED_CODECS);
    - a folder: a saved codec (scd.codec.autoencoder; a training run directory gives its newest checkpoint) or a
      diffusers autoencoder (its config.json names AutoencoderKL or AutoencoderDC; needs `pixel_shape`).
    `pixel_shape` (H, W, 3), when given, must be the codec's (ValueError otherwise): the data's frame size."""
    if isinstance(spec, Codec):
        codec = spec
    elif isinstance(spec, dict):
        codec = _from_dict(spec, root, pixel_shape)
    elif str(spec) == "pixel" and not Path(spec).exists():
        if pixel_shape is None:
            raise ValueError("the pixel codec needs pixel_shape (H, W, 3): the data's frame size")
        codec = PixelCodec(pixel_shape)
    elif str(spec) in SHIPPED_CODECS and not Path(spec).exists():
        codec = _from_folder(SHIPPED_CODECS[str(spec)], pixel_shape)
    else:
        codec = _from_folder(Path(spec), pixel_shape)
    if pixel_shape is not None:
        codec.check_pixel_shape(_shape(pixel_shape, "pixel_shape"))
    return codec.to(device).eval()


def _from_dict(spec: dict, root, pixel_shape) -> Codec:
    kind = spec.get("kind")
    if kind == "pixel":
        return PixelCodec(spec.get("pixel_shape"))
    if kind not in ("autoencoder", "diffusers"):
        raise ValueError(f"unknown codec kind {kind!r} in {spec} (known: pixel, autoencoder, diffusers)")
    if not spec.get("path"):
        raise ValueError(f"the {kind} codec record {spec} names no path to load it from (save the codec first)")
    path = Path(spec["path"])
    path = path if path.is_absolute() or root is None else Path(root) / path
    codec = _from_folder(path, spec.get("pixel_shape", pixel_shape))
    if codec.kind != kind:
        raise ValueError(f"codec {path} holds a codec of kind {codec.kind}, the record says {kind}")
    recorded = spec.get("sha256")
    if recorded is not None and recorded != codec.to_dict().get("sha256"):
        raise ValueError(f"codec {path} is not the one recorded: its weights' sha256 differs from the record's")
    if tuple(spec.get("frame_shape", codec.frame_shape)) != codec.frame_shape:
        raise ValueError(f"codec {path}: the record says frames {spec['frame_shape']} but the {codec.describe()}")
    return codec


def _from_folder(path: Path, pixel_shape) -> Codec:
    if not path.exists():
        raise FileNotFoundError(f"codec not found: {path} (give a codec or training run directory, a diffusers "
                                "autoencoder folder, or 'pixel')")
    config_file = path / "config.json"
    if path.is_dir() and not config_file.exists():
        from .autoencoder import AutoencoderCodec

        return AutoencoderCodec.load(path)  # a run directory: its newest checkpoint
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"codec {path}: config.json is unreadable or corrupt ({err})") from None
    if isinstance(config, dict) and "_class_name" in config:
        from .diffusers_codec import DiffusersCodec

        if pixel_shape is None:
            raise ValueError(f"diffusers autoencoder {path}: give pixel_shape (H, W, 3), the frame size to code")
        return DiffusersCodec(path, pixel_shape)
    if isinstance(config, dict) and config.get("format") == CODEC_FORMAT:
        from .autoencoder import AutoencoderCodec

        return AutoencoderCodec.load(path)
    raise ValueError(f"{path} is not a codec: its config.json is neither an {CODEC_FORMAT} codec nor a diffusers "
                     "autoencoder (no _class_name)")
