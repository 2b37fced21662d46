"""Field-standard autoencoders from diffusers (AutoencoderKL, AutoencoderDC: the paper's DC-AE), read from a
local folder written by save_pretrained. Nothing is downloaded. diffusers is optional: pip install 'scd[diffusers]'."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .base import Codec

CLASSES = ("AutoencoderKL", "AutoencoderDC")


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("a diffusers autoencoder codec needs the diffusers package: "
                          "pip install 'scd[diffusers]' (or pip install diffusers)") from err
    return diffusers


class DiffusersCodec(Codec):
    """A diffusers AutoencoderKL or AutoencoderDC as a codec. Latents are the model's scaled ones:
    (mean - shift_factor) * scaling_factor for AutoencoderKL (its posterior mean: deterministic), latent *
    scaling_factor for AutoencoderDC, with the factors from the folder's config.json."""

    kind = "diffusers"

    def __init__(self, folder: str | os.PathLike, pixel_shape):
        super().__init__(pixel_shape)
        self.folder = Path(folder).resolve()
        try:
            config = json.loads((self.folder / "config.json").read_text())
            name = config["_class_name"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.folder} is not a diffusers autoencoder folder: no readable config.json with "
                             f"_class_name ({err})") from None
        if name not in CLASSES:
            raise ValueError(f"{self.folder} holds a diffusers {name}; the codec takes {', '.join(CLASSES)}")
        try:
            self.model = getattr(_diffusers(), name).from_pretrained(self.folder, local_files_only=True,
                                                                     low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ValueError(f"cannot load the diffusers {name} in {self.folder}: its files are missing, corrupt "
                             f"or do not fit its config.json ({str(err).strip().splitlines()[0]})") from None
        self.model.float().eval().requires_grad_(False)
        self.class_name = name
        self.scaling = float(self.model.config.scaling_factor)
        self.shift = float(getattr(self.model.config, "shift_factor", None) or 0.0)
        h, w, _ = self.pixel_shape
        try:
            with torch.no_grad():
                self._frame_shape = tuple(self.encode_float(torch.zeros(1, 3, h, w)).shape[1:])
        except RuntimeError as err:
            raise ValueError(f"the diffusers {name} in {self.folder} cannot encode {h}x{w} frames "
                             f"({str(err).strip().splitlines()[0]})") from None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self._frame_shape

    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_name == "AutoencoderKL":
            return (self.model.encode(x).latent_dist.mode() - self.shift) * self.scaling
        return self.model.encode(x).latent * self.scaling

    def decode_float(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.scaling + self.shift).sample

    def to_dict(self) -> dict:
        return {**super().to_dict(), "path": str(self.folder), "class": self.class_name}
