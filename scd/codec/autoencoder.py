"""A small convolutional autoencoder for game frames, trained by scd.codec.train.

Encoder: a 3x3 conv, then per resolution level `blocks` residual blocks and (except at the last level) a
stride-2 conv; a residual block and a 3x3 conv to the latent (twice the channels for a KL bottleneck: mean and
log-variance). The decoder mirrors it with nearest-neighbour upsampling. The codec's latent is the encoder's
(mean) output standardised per channel, (z - shift) / scale, with shift and scale measured on training frames
(AutoencoderCodec.fit_scale), so a world model sees latents of zero mean and unit variance.

Saved as a directory (scd.checkpoint.write_checkpoint): config.json (format scd-codec-v1, the codec record,
sha256 of every file) and model.safetensors (weights, shift and scale); a training checkpoint adds trainer.pt.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from scd.checkpoint import latest_checkpoint, load_weights, write_checkpoint

from .base import CODEC_FORMAT, Codec

BOTTLENECKS = ("plain", "kl")


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = 8
    widths: tuple[int, ...] = (32, 64, 128, 128)  # channels per resolution level: len - 1 halvings
    blocks: int = 1  # residual blocks per level (encoder and decoder)
    bottleneck: Literal["plain", "kl"] = "plain"  # kl: the encoder also predicts a log-variance, sampled in training

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        problems = []
        if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
            problems.append(f"latent_channels must be a positive integer, got {self.latent_channels!r}")
        if not self.widths or not all(isinstance(w, int) and w >= 1 for w in self.widths):
            problems.append(f"widths must be positive integers, got {self.widths!r}")
        if not isinstance(self.blocks, int) or self.blocks < 1:
            problems.append(f"blocks must be a positive integer, got {self.blocks!r}")
        if self.bottleneck not in BOTTLENECKS:
            problems.append(f"bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        if problems:
            raise ValueError("invalid autoencoder config: " + "; ".join(problems))

    @property
    def factor(self) -> int:
        """Spatial downsampling: a latent cell covers factor x factor pixels."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}  # as JSON gives it back

    @classmethod
    def from_dict(cls, data) -> "AutoencoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise ValueError(f"autoencoder config must be an object with keys from {sorted(names)}, got {data!r}")
        return cls(**data)


# Candidates (latent shape for 64x64 frames; at 128x128 each side doubles), chosen between by measurement:
# scripts/codec_table.py trains and scores them. Widths start at 16: the full-resolution level dominates the cost.
CODEC_PRESETS = {
    "f4c4": AutoencoderConfig(4, (16, 32, 64)),  # 16x16x4: 64 tokens of 16 values at patch 2
    "f4c8": AutoencoderConfig(8, (16, 32, 64)),  # 16x16x8: 64 tokens of 32 values at patch 2
    "f8c8": AutoencoderConfig(8, (16, 32, 64, 128)),  # 8x8x8: 64 tokens at patch 1
    "f8c16": AutoencoderConfig(16, (16, 32, 64, 128)),  # 8x8x16
    "f8c8-kl": AutoencoderConfig(8, (16, 32, 64, 128), bottleneck="kl"),
    "f8c8-wide": AutoencoderConfig(8, (32, 64, 128, 128)),
    "f16c32": AutoencoderConfig(32, (16, 32, 64, 128, 128)),  # 4x4x32: 16 tokens; 8x8x32 at 128x128 (the paper's)
}
DEFAULT_PRESET = "f8c8"  # what a codec run trains when neither an architecture nor a codec to start from is given


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), the last conv zero-initialised: no normalisation layer, which would remove
    the absolute colour of flat regions (per-frame statistics), and every block starts as the identity."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _encoder(cfg: AutoencoderConfig) -> nn.Sequential:
    """(N, 3, H, W) -> (N, C or 2C, H / f, W / f)."""
    layers, c = [nn.Conv2d(3, cfg.widths[0], 3, padding=1)], cfg.widths[0]
    for level, width in enumerate(cfg.widths):
        for _ in range(cfg.blocks):
            layers.append(ResBlock(c, width))
            c = width
        if level < len(cfg.widths) - 1:
            layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
    out = cfg.latent_channels * (2 if cfg.bottleneck == "kl" else 1)
    layers += [ResBlock(c, c), nn.SiLU(), nn.Conv2d(c, out, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: AutoencoderConfig) -> nn.Sequential:
    """(N, C, h, w) -> (N, 3, h * f, w * f)."""
    c = cfg.widths[-1]
    layers = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), ResBlock(c, c)]
    for level, width in reversed(list(enumerate(cfg.widths))):
        for _ in range(cfg.blocks):
            layers.append(ResBlock(c, width))
            c = width
        if level > 0:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
    layers += [nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
    return nn.Sequential(*layers)


class AutoencoderCodec(Codec):
    """A trained convolutional autoencoder: (H, W, 3) frames <-> (C, H / f, W / f) standardised latents."""

    kind = "autoencoder"
    stored_in_checkpoints = True  # a world model's checkpoint holds a copy (scd.checkpoint.codec_record)

    def __init__(self, config: AutoencoderConfig, pixel_shape=(64, 64, 3)):
        super().__init__(pixel_shape)
        h, w, _ = self.pixel_shape
        if h % config.factor or w % config.factor:
            raise ValueError(f"an f{config.factor} autoencoder needs frame sides divisible by {config.factor}, "
                             f"got {h}x{w}")
        self.config = config
        self.encoder, self.decoder = _encoder(config), _decoder(config)
        c = config.latent_channels
        self.register_buffer("shift", torch.zeros(c))  # per-channel latent mean and std (fit_scale)
        self.register_buffer("scale", torch.ones(c))
        self.source: dict | None = None  # {"path", "sha256"} of the directory it was loaded from

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w, _ = self.pixel_shape
        return (self.config.latent_channels, h // self.config.factor, w // self.config.factor)

    def latent_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw (unstandardised) encoder output: mean (N, C, h, w) and, for a KL bottleneck, its log-variance."""
        out = self.encoder(x)
        if self.config.bottleneck == "plain":
            return out, None
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def reconstruct(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward pass: (reconstruction (N, 3, H, W), KL to N(0, 1) per latent value, 0 if plain).
        `sample`: draw the latent from the KL posterior (else its mean)."""
        mean, logvar = self.latent_distribution(x)
        if logvar is None:
            return self.decoder(mean), mean.new_zeros(())
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return self.decoder(z), kl

    def encode_float(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self.latent_distribution(x)
        return (mean - self.shift[:, None, None]) / self.scale[:, None, None]

    def decode_float(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z * self.scale[:, None, None] + self.shift[:, None, None])

    @torch.no_grad()
    def fit_scale(self, batches) -> None:
        """Set shift and scale to the per-channel mean and std of the raw latents of `batches`, an iterable of
        (N, 3, H, W) pixel batches in [-1, 1]."""
        means = torch.cat([self.latent_distribution(x)[0].transpose(0, 1).flatten(1) for x in batches], 1)  # (C, n)
        self.shift.copy_(means.mean(1))
        self.scale.copy_(means.std(1).clamp(min=1e-6))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "config": self.config.to_dict(), **(self.source or {})}

    # -- files ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, meta: dict | None = None, trainer_state: dict | None = None) -> Path:
        """Write the codec directory at `path` atomically (replacing one there); `meta` joins config.json."""
        record = {k: v for k, v in self.to_dict().items() if k not in ("path", "sha256")}
        config = {"format": CODEC_FORMAT, "codec": record, **(meta or {})}
        return write_checkpoint(path, config, {"model.safetensors": self}, trainer_state)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AutoencoderCodec":
        """A saved codec directory, or a training run directory's newest checkpoint."""
        path = Path(path)
        if path.is_dir() and not (path / "config.json").exists():
            newest = latest_checkpoint(path)
            if newest is None:
                raise FileNotFoundError(f"{path} is neither a codec (no config.json) nor a training run directory "
                                        "with checkpoints")
            path = newest
        config, state = load_weights(path, "model.safetensors", CODEC_FORMAT)
        codec = cls.from_record(config.get("codec"), state, f"codec {path}: config.json", "model.safetensors")
        codec.source = {"path": str(Path(config["path"]).resolve()), "sha256": config["files"]["model.safetensors"]}
        codec.checkpoint_info = {k: v for k, v in config.items() if k != "files"}
        return codec

    @classmethod
    def from_record(cls, record, state: dict[str, torch.Tensor], where: str, file: str) -> "AutoencoderCodec":
        """The codec a record (to_dict()) describes, with the weights `state` read from `file`; `where` names the
        record in errors."""
        if not isinstance(record, dict) or record.get("kind") != cls.kind:
            raise ValueError(f"{where} does not describe an autoencoder codec")
        try:
            codec = cls(AutoencoderConfig.from_dict(record.get("config")), record.get("pixel_shape"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where} is invalid ({err})") from None
        missing, unexpected = codec.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{file} does not fit {where}: missing {missing}, unexpected {unexpected}")
        return codec.eval()
