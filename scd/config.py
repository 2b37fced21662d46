"""Model configuration and presets (plain data).

One frozen dataclass describes either architecture:
- ``arch="causal_dit"``: ``depth`` = L frame-causal blocks, run at every denoising step.
- ``arch="scd"``: ``encoder_depth`` = l causal blocks run once per frame, ``decoder_depth`` = m frame-wise
  blocks run at every denoising step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ARCHS = ("scd", "causal_dit")
# How the decoder fuses the context c_i with the noisy frame (supplementary Tab. 1):
#   seq_offset: sequence concat, c_i placed one frame earlier in RoPE time (default, preferred in Tab. 1)
#   seq_same:   sequence concat, c_i at the same RoPE position as the noisy frame
#   channel:    channel concat [c_i | x_i] followed by a Linear initialised to [I | I]
FUSIONS = ("seq_offset", "seq_same", "channel")
# What the SCD encoder reads in the slot of frame i (supp. E.1, "input reparameterisation"):
#   previous_frame: (x_{i-1} or a learned start token, a_i): one clean pass per frame (default)
#   noisy_current:  the Causal DiT's teacher-forcing layout: clean x_<i as history and the current frame x_i
#                   corrupted to a high flow time (training: t ~ U(t_min, 1); inference: pure noise, t = 1);
#                   c_i is read at the noisy frame's tokens. This is what blocks copied from a Causal DiT saw.
ENCODER_INPUTS = ("previous_frame", "noisy_current")
# What the network outputs (flow.PREDICTIONS): "velocity" u = eps - x (the paper), "x" the clean frame, "change"
# the clean frame's change from the last history frame before history noise, "change-noisy" from it as read (with
# the noise). Names only: config stays importable without torch.
PREDICTIONS = ("velocity", "x", "change", "change-noisy")


# The sampler settings a model carries as its defaults (a checkpoint's may change without touching its weights).
SAMPLER_DEFAULTS = ("sample_steps", "sample_temperature", "sample_shift", "sample_window")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_temperature(value) -> bool:
    """A valid sampling temperature (the starting noise's standard deviation): a finite number >= 0."""
    return _is_finite_number(value) and value >= 0


def is_shift(value) -> bool:
    """A valid schedule shift k of t' = k t / (1 + (k - 1) t): a finite number > 0."""
    return _is_finite_number(value) and value > 0


def _json_value_fits(annotation: str, value) -> bool:
    """Does a JSON value fit a field annotated `annotation` (int, float, bool, str, a Literal of strings, a tuple of
    ints or floats, optionally "| None")? Other annotations are left to __post_init__."""
    if annotation.endswith(" | None"):
        return value is None or _json_value_fits(annotation.removesuffix(" | None"), value)
    if annotation.startswith("tuple"):
        item = "float" if annotation.startswith("tuple[float") else "int"
        return isinstance(value, (list, tuple)) and all(_json_value_fits(item, v) for v in value)
    if annotation.startswith("Literal") or annotation == "str":
        return isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return True


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["scd", "causal_dit"]
    frame_shape: tuple[int, int, int] = (3, 64, 64)  # (C, H, W) of one frame: pixels or any latent
    patch_size: int = 8
    hidden: int = 256
    head_dim: int = 64
    depth: int = 0  # L (causal_dit)
    encoder_depth: int = 0  # l (scd)
    decoder_depth: int = 0  # m (scd)
    num_actions: int = 17
    mlp_ratio: float = 4.0
    fusion: Literal["seq_offset", "seq_same", "channel"] = "seq_offset"
    rope_theta: float = 10000.0
    encoder_input: Literal["previous_frame", "noisy_current"] = "previous_frame"  # scd only
    prediction: Literal["velocity", "x", "change", "change-noisy"] = "velocity"
    # Flow time at which history frames are read at inference (noise augmentation: trained with
    # FlowConfig.history_noise >= this); 0 = clean history.
    history_noise: float = 0.0
    # Denoising steps S a rollout takes unless told (Streamer, scd generate / eval / probe): the S this model was
    # found best at (change prediction: few steps; the paper: 50).
    sample_steps: int = 20
    # Standard deviation of each generated frame's starting noise unless told (Streamer, scd generate / eval / play):
    # < 1 lets less of the noise through the few denoising steps into the frame, where change prediction keeps it
    # as speckle that later frames inherit (less diversity, less drift); 1 = the trained noise.
    sample_temperature: float = 1.0
    # Shift k of the sampler's schedule unless told (t' = k t / (1 + (k - 1) t)): k < 1 puts the later steps at low
    # noise, where they sharpen the first step's estimate instead of adding detail from noise.
    sample_shift: float = 1.0
    # Past frames the next frame sees in `scd generate` / `scd play` / `scd demo` unless told (a KV-cache window;
    # `scd eval` and `rollout` see the whole rollout). None: the training clip length - 1, the most any training
    # frame saw; RoPE lets a model read further back, which can hold what the context showed for longer.
    sample_window: int | None = None
    # Range of valid frame values (pixels: [-1, 1]); a generated frame is clamped to it before it becomes history,
    # so a rollout never reads values no training frame had. None: unbounded (latents).
    frame_range: tuple[float, float] | None = (-1.0, 1.0)

    def __post_init__(self) -> None:
        # Frozen dataclasses get lists from JSON; normalise to a tuple so configs compare equal.
        object.__setattr__(self, "frame_shape", tuple(int(v) for v in self.frame_shape))
        if self.frame_range is not None:
            object.__setattr__(self, "frame_range", tuple(float(v) for v in self.frame_range))
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if len(self.frame_shape) != 3 or min(self.frame_shape) < 1:
            problems.append(f"frame_shape must be (C, H, W) with positive sizes, got {self.frame_shape}")
        else:
            _, h, w = self.frame_shape
            if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
                problems.append(f"patch_size {self.patch_size} must divide the frame size {h}x{w}")
        if self.head_dim < 8 or self.head_dim % 2:
            problems.append(f"head_dim must be even and >= 8, got {self.head_dim}")
        elif self.hidden % self.head_dim:
            problems.append(f"hidden {self.hidden} must be a multiple of head_dim {self.head_dim}")
        if self.num_actions < 1:
            problems.append(f"num_actions must be >= 1, got {self.num_actions}")
        if self.arch == "causal_dit":
            if self.depth < 1:
                problems.append(f"causal_dit needs depth >= 1, got {self.depth}")
            if self.encoder_depth or self.decoder_depth:
                problems.append("causal_dit uses depth; encoder_depth/decoder_depth must be 0")
        if self.arch == "scd":
            if self.encoder_depth < 1 or self.decoder_depth < 1:
                problems.append(
                    f"scd needs encoder_depth >= 1 and decoder_depth >= 1, got {self.encoder_depth}+{self.decoder_depth}"
                )
            if self.depth:
                problems.append("scd uses encoder_depth + decoder_depth; depth must be 0")
            if self.fusion not in FUSIONS:
                problems.append(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.encoder_input not in ENCODER_INPUTS:
            problems.append(f"encoder_input must be one of {ENCODER_INPUTS}, got {self.encoder_input!r}")
        elif self.arch == "causal_dit" and self.encoder_input != "previous_frame":
            problems.append("causal_dit has no encoder; encoder_input applies to scd only")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.frame_range is not None and not (len(self.frame_range) == 2
                                                 and self.frame_range[0] < self.frame_range[1]):
            problems.append(f"frame_range must be (low, high) with low < high, or None, got {self.frame_range}")
        if not 0 <= self.history_noise < 1:
            problems.append(f"history_noise must be a flow time in [0, 1), got {self.history_noise}")
        if isinstance(self.sample_steps, bool) or not isinstance(self.sample_steps, int) or self.sample_steps < 1:
            problems.append(f"sample_steps must be an integer >= 1, got {self.sample_steps!r}")
        if not is_temperature(self.sample_temperature):
            problems.append(f"sample_temperature must be a finite number >= 0, got {self.sample_temperature!r}")
        if not is_shift(self.sample_shift):
            problems.append(f"sample_shift must be a finite number > 0, got {self.sample_shift!r}")
        if self.sample_window is not None and (isinstance(self.sample_window, bool) or
                                               not isinstance(self.sample_window, int) or self.sample_window < 1):
            problems.append(f"sample_window must be an integer >= 1 or None, got {self.sample_window!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def heads(self) -> int:
        return self.hidden // self.head_dim

    @property
    def tokens_per_frame(self) -> int:
        _, h, w = self.frame_shape
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = self.frame_shape
        return h // self.patch_size, w // self.patch_size

    @property
    def patch_dim(self) -> int:
        return self.frame_shape[0] * self.patch_size**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """A config from JSON data, with every value's type checked (a config.json may have been edited by hand)."""
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        for name, value in data.items():
            if not _json_value_fits(known[name], value):
                raise ValueError(f"model config {name} must be {known[name]}, got {value!r}")
        return cls(**data)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# The paper's supplementary Tab. 5 uses a DC-AE latent of 8x8x32 per 128x128 frame with patch 1: 64 tokens per frame.
_PAPER_LATENT = dict(frame_shape=(32, 8, 8), patch_size=1, head_dim=64)
_CRAFTER = dict(frame_shape=(3, 64, 64), patch_size=8, num_actions=17)
# Latent Crafter: the paper's layout (8x8x32 latent, patch 1, 64 tokens per frame) from a codec such as scd.codec's
# f16c32 on 128x128 frames (`scd codec train --preset f16c32`); latents are unbounded (no frame_range).
_CRAFTER_LATENT = dict(frame_shape=(32, 8, 8), patch_size=1, num_actions=17, frame_range=None)

PRESETS: dict[str, ModelConfig] = {
    # Paper variants (Tab. 5): #blocks, hidden; head dim 64.
    "dit-b": ModelConfig("causal_dit", depth=12, hidden=768, **_PAPER_LATENT),
    "scd-b": ModelConfig("scd", encoder_depth=8, decoder_depth=4, hidden=768, **_PAPER_LATENT),
    "scd-b-e": ModelConfig("scd", encoder_depth=12, decoder_depth=4, hidden=768, **_PAPER_LATENT),
    "scd-b-d": ModelConfig("scd", encoder_depth=8, decoder_depth=12, hidden=768, **_PAPER_LATENT),
    "far-m": ModelConfig("causal_dit", depth=12, hidden=1024, **_PAPER_LATENT),
    "scd-m": ModelConfig("scd", encoder_depth=8, decoder_depth=4, hidden=1024, **_PAPER_LATENT),
    "scd-m-e": ModelConfig("scd", encoder_depth=12, decoder_depth=4, hidden=1024, **_PAPER_LATENT),
    "scd-m-d": ModelConfig("scd", encoder_depth=8, decoder_depth=12, hidden=1024, **_PAPER_LATENT),
    # Small models that train on a CPU, on 64x64 RGB Crafter frames (8x8 patches: 64 tokens per frame).
    "dit-s": ModelConfig("causal_dit", depth=8, hidden=256, **_CRAFTER),
    "scd-s": ModelConfig("scd", encoder_depth=6, decoder_depth=2, hidden=256, **_CRAFTER),
    "dit-xs": ModelConfig("causal_dit", depth=6, hidden=192, **_CRAFTER),
    "scd-xs": ModelConfig("scd", encoder_depth=4, decoder_depth=2, hidden=192, **_CRAFTER),
    # The same on 8x8x32 latents of 128x128 frames (scd train --codec sets frame_shape from the codec).
    "dit-xs-latent": ModelConfig("causal_dit", depth=6, hidden=192, **_CRAFTER_LATENT),
    "scd-xs-latent": ModelConfig("scd", encoder_depth=4, decoder_depth=2, hidden=192, **_CRAFTER_LATENT),
    # Tiny models for tests and smoke runs.
    "dit-tiny": ModelConfig("causal_dit", depth=3, hidden=64, head_dim=16, **_CRAFTER),
    "scd-tiny": ModelConfig("scd", encoder_depth=2, decoder_depth=1, hidden=64, head_dim=16, **_CRAFTER),
}


def get_preset(name: str) -> ModelConfig:
    """A preset by name, in any case (the paper writes DiT-B, SCD-M)."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (any case)") from None


# What ships inside the package (see scd/assets/MODEL_CARD.md): Crafter world models and real opening frames.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_CHECKPOINTS = {"scd": ASSETS_DIR / "crafter-scd-xs", "dit": ASSETS_DIR / "crafter-dit-xs"}
SHIPPED_CONTEXT = ASSETS_DIR / "crafter-context.npz"
# Names that load_model (and every --checkpoint) accepts for the shipped checkpoints.
SHIPPED_MODELS = {"crafter-scd": SHIPPED_CHECKPOINTS["scd"], "crafter-dit": SHIPPED_CHECKPOINTS["dit"]}
# Names that load_codec (and every --codec) accepts for the shipped codecs: the Crafter autoencoder, 64x64 -> 4x16x16.
SHIPPED_CODECS = {"crafter": ASSETS_DIR / "crafter-codec"}
