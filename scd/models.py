"""The two world models: the Causal DiT baseline and Separable Causal Diffusion (SCD).

Both share one interface, so the objective, the sampler and the rollout never look at the architecture:

Training (teacher forcing, all frames of a clip at once):
    ctx = model.training_context(frames, actions)      # Causal DiT: the clean frames; SCD: c = E(x_<i, a_<=i)
    v = model.velocity(x_t, t, ctx, actions)           # predicted velocity for every frame

Streaming (one frame at a time, with a KV cache):
    stream = model.new_stream(batch, window)
    model.prefill(stream, context_frames, context_actions)
    ctx_i = model.frame_context(stream, a_i)           # SCD: the encoder's one pass for frame i
    v = model.frame_velocity(stream, ctx_i, x_t, t, a_i)   # one denoising step
    model.commit(stream, x_i, a_i)                     # the finished frame becomes history

Shapes: frames (B, F, C, H, W) in the model's data space (pixels in [-1, 1] or latents); actions (B, F) int;
flow time t (B, F) in [0, 1] with t = 1 pure noise. actions[:, i] is the action that produced frame i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .nn import (
    Conditioning,
    DiTBlock,
    FinalLayer,
    KVCache,
    Patchify,
    RoPE,
    group_attention_mask,
    init_linear_layers,
)


@dataclass
class Stream:
    """State of one streaming rollout: the KV cache and how many frames are known so far."""

    cache: KVCache
    batch: int
    num_frames: int = 0  # frames observed or generated so far = index of the next frame
    last_frame: torch.Tensor | None = None  # SCD: latest clean frame (B, C, H, W), input of the next encoder slot


def _with_cached_prefix(mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor | None:
    """Extend a (N, N) mask with all-visible columns for the committed cache tokens (all clean, all past)."""
    if mask is None or cache is None or cache.length == 0:
        return mask
    visible = torch.ones(mask.shape[0], cache.length, dtype=torch.bool, device=mask.device)
    return torch.cat([visible, mask], dim=1)


def run_blocks(blocks, x, cond, rope, mask=None, cache: KVCache | None = None) -> torch.Tensor:
    """Apply a stack of DiT blocks; x: (B, G, T, D), cond: (B, G, D)."""
    mask = _with_cached_prefix(mask, cache)
    for layer, block in enumerate(blocks):
        x = block(x, cond, rope, mask, cache, layer)
    return x


class WorldModel(nn.Module):
    """What both architectures share: config, patchify, RoPE, input checks."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.patchify = Patchify(config.frame_shape, config.patch_size)
        self.rope = RoPE(config.head_dim, config.grid, config.rope_theta)

    @property
    def null_action(self) -> int:
        return self.config.num_actions

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_frames(self, frames: torch.Tensor, name: str = "frames") -> None:
        """frames: (B, F, C, H, W) with the configured (C, H, W)."""
        expected = tuple(self.config.frame_shape)
        if frames.ndim != 5 or tuple(frames.shape[2:]) != expected:
            c, h, w = expected
            raise ValueError(f"{name} must have shape (B, F, {c}, {h}, {w}), got {tuple(frames.shape)}")

    def check_actions(self, actions: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(actions.shape) != tuple(shape):
            raise ValueError(f"actions must have shape {tuple(shape)}, got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point:
            raise ValueError(f"actions must be integer ids, got dtype {actions.dtype}")
        if actions.numel() and (actions.min() < 0 or actions.max() > self.null_action):
            bad = actions[(actions < 0) | (actions > self.null_action)][0].item()
            raise ValueError(
                f"unknown action id {bad}: this model knows {self.config.num_actions} actions "
                f"(ids 0..{self.config.num_actions - 1}; {self.null_action} is the null action)"
            )

    def new_stream(self, batch: int, window: int = 256) -> Stream:
        """A fresh rollout state that keeps the last `window` frames of history in its KV cache."""
        return Stream(KVCache(self.cache_layers, window + 1, self.config.tokens_per_frame), batch)

    def _check_stream_input(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        self.check_frames(frames)
        if frames.shape[0] != stream.batch:
            raise ValueError(f"stream has batch {stream.batch}, got frames with batch {frames.shape[0]}")
        self.check_actions(actions, frames.shape[:2])

    def corrupt_context(self, ctx, eta: float, generator: torch.Generator | None = None):
        raise ValueError(f"context noise (eta) needs an SCD model; {type(self).__name__} has no context c_i")


class CausalDiT(WorldModel):
    """L DiT blocks with frame-causal attention (bidirectional inside a frame) at every denoising step."""

    def __init__(self, config: ModelConfig):
        if config.arch != "causal_dit":
            raise ValueError(f"CausalDiT needs arch='causal_dit', got {config.arch!r}")
        super().__init__(config)
        d = config.hidden
        self.embed = nn.Linear(config.patch_dim, d)
        self.cond = Conditioning(d, config.num_actions)
        self.blocks = nn.ModuleList(DiTBlock(d, config.head_dim, config.mlp_ratio) for _ in range(config.depth))
        self.head = FinalLayer(d, config.patch_dim)
        init_linear_layers(self)

    @property
    def cache_layers(self) -> int:
        return self.config.depth

    def _transformer(self, frames, t, actions, frame_pos, is_clean, cache=None):
        """frames: (B, G, C, H, W) with per-group t, actions (B, G) -> (hidden (B, G, P, D), cond (B, G, D))."""
        cond = self.cond(t, actions)
        rope = self.rope(self.rope.positions(frame_pos))
        mask = group_attention_mask(frame_pos, is_clean, self.config.tokens_per_frame)
        return run_blocks(self.blocks, self.embed(self.patchify(frames)), cond, rope, mask, cache), cond

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.check_frames(frames)
        self.check_actions(actions, frames.shape[:2])
        return frames

    def velocity(self, x_t, t, frames, actions) -> torch.Tensor:
        """Teacher forcing in one pass over the sequence [clean x_0..x_{F-2} ; noisy x_0..x_{F-1}] (2F-1 groups).

        Noisy frame i attends to clean frames < i and to itself, exactly what the KV cache gives at inference."""
        self.check_frames(x_t, "x_t")
        b, f = x_t.shape[:2]
        dev = x_t.device
        seq = torch.cat([frames[:, :-1], x_t], dim=1)
        t_all = torch.cat([torch.zeros(b, f - 1, device=dev), t], dim=1)
        a_all = torch.cat([actions[:, :-1], actions], dim=1)
        frame_pos = torch.cat([torch.arange(f - 1, device=dev), torch.arange(f, device=dev)])
        is_clean = torch.arange(2 * f - 1, device=dev) < f - 1
        h, cond = self._transformer(seq, t_all, a_all, frame_pos, is_clean)
        return self.patchify.unpatchify(self.head(h[:, f - 1 :], cond[:, f - 1 :]))

    # -- streaming -------------------------------------------------------------------------------------------
    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Run clean frames (B, n, C, H, W) with t = 0 and write their K/V to the cache."""
        self._check_stream_input(stream, frames, actions)
        b, n = frames.shape[:2]
        n_tokens = n * self.config.tokens_per_frame
        stream.cache.reserve(n_tokens)
        frame_pos = torch.arange(stream.num_frames, stream.num_frames + n, device=frames.device)
        is_clean = torch.ones(n, dtype=torch.bool, device=frames.device)
        t = torch.zeros(b, n, device=frames.device)
        self._transformer(frames, t, actions, frame_pos, is_clean, stream.cache)
        stream.cache.commit(n_tokens)
        stream.num_frames += n

    def frame_context(self, stream: Stream, action: torch.Tensor, commit: bool = True) -> None:
        """A Causal DiT reads its history inside every denoising step: there is nothing to prepare."""
        self.check_actions(action, (stream.batch,))
        return None

    def frame_velocity(self, stream: Stream, ctx, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One denoising step of frame `stream.num_frames`: x_t (B, C, H, W), t (B,) -> velocity (B, C, H, W)."""
        stream.cache.reserve(self.config.tokens_per_frame)  # scratch room for this frame's K/V
        frame_pos = torch.tensor([stream.num_frames], device=x_t.device)
        is_clean = torch.zeros(1, dtype=torch.bool, device=x_t.device)
        h, cond = self._transformer(x_t[:, None], t[:, None], action[:, None], frame_pos, is_clean, stream.cache)
        return self.patchify.unpatchify(self.head(h, cond))[:, 0]

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """One extra clean pass writes the finished frame's K/V (as the Causal DiT was trained: t = 0)."""
        self.prefill(stream, frame[:, None], action[:, None])


class CausalEncoder(nn.Module):
    """l frame-causal blocks over encoder slots; slot i holds (x_{i-1}, a_i) and outputs c_i = E(x_<i, a_<=i).

    Slot 0 holds a learned start token instead of a frame: the first frame's empty history."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.hidden
        self.embed = nn.Linear(config.patch_dim, d)
        self.start = nn.Parameter(torch.randn(config.tokens_per_frame, d) * 0.02)
        self.cond = Conditioning(d, config.num_actions)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.head_dim, config.mlp_ratio) for _ in range(config.encoder_depth)
        )
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)  # c_i has unit variance per token

    def slots(self, patches: torch.Tensor, with_start: bool) -> torch.Tensor:
        """patches: (B, n, P, patch_dim) of previous frames -> slot tokens (B, n + with_start, P, D)."""
        tokens = self.embed(patches)
        if with_start:
            start = self.start.to(tokens.dtype).expand(tokens.shape[0], 1, *self.start.shape)
            tokens = torch.cat([start, tokens], dim=1)
        return tokens

    def forward(self, slots, actions, first_pos: int, rope_module: RoPE, cache=None, t=None) -> torch.Tensor:
        """slots: (B, n, P, D); actions (B, n) -> c (B, n, P, D). t: flow time of each slot (0 = clean)."""
        b, n = slots.shape[:2]
        frame_pos = torch.arange(first_pos, first_pos + n, device=slots.device)
        if t is None:
            t = torch.zeros(b, n, device=slots.device)
        rope = rope_module(rope_module.positions(frame_pos))
        mask = group_attention_mask(frame_pos, torch.ones_like(frame_pos, dtype=torch.bool), slots.shape[2])
        return self.norm(run_blocks(self.blocks, slots, self.cond(t, actions), rope, mask, cache))


class FrameDecoder(nn.Module):
    """m blocks that denoise one frame from [c_i ; noisy x_i]; attention never reaches another frame."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, p = config.hidden, config.tokens_per_frame
        self.fusion = config.fusion
        self.embed = nn.Linear(config.patch_dim, d)
        self.cond = Conditioning(d, config.num_actions)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.head_dim, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.head = FinalLayer(d, config.patch_dim)
        if self.fusion == "channel":
            self.fuse = nn.Linear(2 * d, d)
            with torch.no_grad():  # starts as c_i + x_i
                self.fuse.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], dim=1))
                self.fuse.bias.zero_()
            self.fuse.keep_init = True
        # RoPE frame coordinate of the c_i tokens and of the noisy tokens (relative, so frame-independent).
        self.context_frame = 0.0 if self.fusion == "seq_offset" else 1.0

    def forward(self, x_t, t, c, actions, rope_module: RoPE) -> torch.Tensor:
        """x_t: (N, C, H, W) patches (N, P, patch_dim); t, actions: (N,); c: (N, P, D) -> velocity patches."""
        cond = self.cond(t, actions)[:, None]  # (N, 1, D)
        x = self.embed(x_t)  # (N, P, D)
        if self.fusion == "channel":
            tokens = self.fuse(torch.cat([c.to(x.dtype), x], dim=-1))[:, None]  # (N, 1, P, D)
            frame_pos = torch.ones(1, device=x.device)
        else:
            tokens = torch.cat([c.to(x.dtype), x], dim=1)[:, None]  # (N, 1, 2P, D)
            frame_pos = torch.tensor([self.context_frame, 1.0], device=x.device)
        rope = rope_module(rope_module.positions(frame_pos))
        h = run_blocks(self.blocks, tokens, cond, rope)
        return self.head(h[:, :, -x.shape[1] :], cond)[:, 0]  # (N, P, patch_dim)


class SCD(WorldModel):
    """Separable Causal Diffusion: a causal encoder run once per frame + a frame-wise diffusion decoder."""

    def __init__(self, config: ModelConfig):
        if config.arch != "scd":
            raise ValueError(f"SCD needs arch='scd', got {config.arch!r}")
        super().__init__(config)
        self.encoder = CausalEncoder(config)
        self.decoder = FrameDecoder(config)
        init_linear_layers(self)

    @property
    def cache_layers(self) -> int:
        return self.config.encoder_depth

    # -- the two halves --------------------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """c_i = E(x_<i, a_<=i) for every frame of a clip: frames (B, F, C, H, W) -> c (B, F, P, D)."""
        self.check_frames(frames)
        self.check_actions(actions, frames.shape[:2])
        slots = self.encoder.slots(self.patchify(frames[:, :-1]), with_start=True)
        return self.encoder(slots, actions, 0, self.rope)

    def decode(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Velocity of noisy frames given their contexts: x_t (..., C, H, W), t and actions (...), c (..., P, D)."""
        lead = x_t.shape[:-3]
        out = self.decoder(
            self.patchify(x_t).flatten(0, -3), t.reshape(-1), c.flatten(0, -3), actions.reshape(-1), self.rope
        )
        return self.patchify.unpatchify(out.reshape(*lead, *out.shape[-2:]))

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.encode(frames, actions)

    def velocity(self, x_t, t, c, actions) -> torch.Tensor:
        self.check_frames(x_t, "x_t")
        return self.decode(x_t, t, c, actions)

    def corrupt_context(self, c: torch.Tensor, eta: float, generator: torch.Generator | None = None):
        """c + eta * zeta with zeta ~ N(0, I) (context noise: training augmentation and guidance)."""
        if eta == 0:
            return c
        noise = torch.randn(c.shape, generator=generator, device=generator.device if generator else c.device)
        return c + eta * noise.to(c.device, c.dtype)

    # -- streaming -------------------------------------------------------------------------------------------
    def _encoder_step(self, stream: Stream, new_frames: torch.Tensor, actions: torch.Tensor, commit: bool):
        """Run encoder slots [last_frame or start, new_frames...] with actions (B, n); returns c (B, n, P, D)."""
        prev = new_frames
        if stream.last_frame is not None:
            prev = torch.cat([stream.last_frame[:, None], new_frames], dim=1)
        slots = self.encoder.slots(self.patchify(prev), with_start=stream.last_frame is None)
        n_tokens = slots.shape[1] * self.config.tokens_per_frame
        stream.cache.reserve(n_tokens)
        c = self.encoder(slots, actions, stream.num_frames, self.rope, stream.cache)
        if commit:
            stream.cache.commit(n_tokens)
        return c

    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Encode known frames (B, n, C, H, W): slots for frames j..j+n-1; the last frame waits for its action."""
        self._check_stream_input(stream, frames, actions)
        self._encoder_step(stream, frames[:, :-1], actions, commit=True)
        stream.last_frame = frames[:, -1]
        stream.num_frames += frames.shape[1]

    def frame_context(self, stream: Stream, action: torch.Tensor, commit: bool = True) -> torch.Tensor:
        """The encoder's once-per-frame pass: c_i (B, P, D) for frame i = stream.num_frames given a_i (B,)."""
        self.check_actions(action, (stream.batch,))
        empty = torch.zeros(stream.batch, 0, *self.config.frame_shape, device=self.device)
        return self._encoder_step(stream, empty, action[:, None], commit)[:, 0]

    def frame_velocity(self, stream: Stream, c, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One decoder step: x_t (B, C, H, W), t (B,), c (B, P, D) -> velocity (B, C, H, W). No history here."""
        return self.decode(x_t, t, c, action)

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """The finished frame becomes the input of the next encoder slot (encoded once the next action is known)."""
        stream.last_frame = frame
        stream.num_frames += 1


def build_model(config: ModelConfig) -> WorldModel:
    """The model class for `config.arch`."""
    return SCD(config) if config.arch == "scd" else CausalDiT(config)
