"""The two world models: the Causal DiT baseline and Separable Causal Diffusion (SCD).

Both share one interface, so the objective, the sampler and the rollout never look at the architecture:

Training (teacher forcing, all frames of a clip at once):
    ctx = model.training_context(history, actions, history_t)  # Causal DiT: History; SCD: c = E(x_<i, a_<=i)
    v = model.velocity(x_t, t, ctx, actions)           # predicted velocity for every frame

Streaming (one frame at a time, with a KV cache):
    stream = model.new_stream(batch, window)
    model.prefill(stream, context_frames, context_actions)
    ctx_i = model.frame_context(stream, a_i, x_T=noise)  # SCD: the encoder's one pass for frame i
    v = model.frame_velocity(stream, ctx_i, x_t, t, a_i)   # one denoising step
    model.commit(stream, x_i, a_i)                     # the finished frame becomes history

Surgeries (`Surgery`, Causal DiT only) are explicit options: `velocity(..., surgery=)` in training and
`new_stream(..., surgery=)` for a rollout; without one the block stack runs unchanged (`run_blocks`).

Shapes: frames (B, F, C, H, W) in the model's data space (pixels in [-1, 1] or latents); actions (B, F) int;
flow time t (B, F) in [0, 1] with t = 1 pure noise. actions[:, i] is the action that produced frame i.
History frames are read at their own flow time history_t (B, F) (0 = clean; noise augmentation, see
FlowConfig.history_noise); in a stream every history frame is read at `stream.history_t` (prefill and commit take
clean frames and corrupt them). The network's output is turned into a velocity by `config.prediction`
(flow.PREDICTIONS), so callers always get velocities. x_t is the flow variable: the noisy frame, or with change
prediction the noisy change from the anchor x_{i-1} (`prediction.to_flow` / `to_frame` convert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .flow import PREDICTIONS, interpolate, repeat_batch
from .sampling import flow_schedule
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


@dataclass(frozen=True)
class Surgery:
    """The paper's two subtraction surgeries on a trained Causal DiT (Sec. 4; supp. A.1), as explicit options.

    Skip-layer schedule: a noisy frame at flow time t <= skip_t runs only its first `keep_prefix` and last
    `keep_suffix` blocks; the middle blocks pass it through unchanged. "The first k of S denoising steps run the
    whole model" is skip_t = flow_schedule(S, shift)[k]: build it with `Surgery.skip_after(k, S, shift, ...)`.
    Training applies the same rule to each frame's own t. Clean frames (the passes that write the KV cache) always
    run every block, since later full steps read all layers. The paper skips layers 8-22 of 30.

    Frame-diagonal mask: the last `diagonal_last` blocks attend only inside their own frame. In teacher-forced
    training every frame, clean or noisy, sees only itself there; in streaming they neither read nor write the
    KV cache (and the clean caching pass stops before them).
    """

    skip_t: float | None = None
    keep_prefix: int = 0
    keep_suffix: int = 0
    diagonal_last: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 0, got {getattr(self, name)}"
                    for name in ("keep_prefix", "keep_suffix", "diagonal_last") if getattr(self, name) < 0]
        if self.skip_t is not None and not 0 <= self.skip_t <= 1:
            problems.append(f"skip_t must be a flow time in [0, 1], got {self.skip_t}")
        if self.skip_t is None and (self.keep_prefix or self.keep_suffix):
            problems.append("keep_prefix/keep_suffix need a skip time (skip_t, or Surgery.skip_after)")
        if problems:
            raise ValueError("invalid surgery: " + "; ".join(problems))

    @classmethod
    def skip_after(cls, step: int, steps: int, shift: float = 1.0, *, keep_prefix: int, keep_suffix: int,
                   diagonal_last: int = 0) -> "Surgery":
        """Steps >= `step` of `steps` Euler steps (schedule warped by `shift`) run only the kept blocks."""
        if not 0 <= step <= steps:
            raise ValueError(f"skip_after_step must be in [0, {steps}] for {steps} denoising steps, got {step}")
        skip_t = float(flow_schedule(steps, shift)[step])  # the float32 schedule value: t <= skip_t is exact
        return cls(skip_t, keep_prefix, keep_suffix, diagonal_last)

    def check(self, depth: int) -> None:
        """Raise unless the surgery fits a stack of `depth` blocks."""
        if self.skip_t is not None and self.keep_prefix + self.keep_suffix > depth:
            raise ValueError(f"surgery keeps {self.keep_prefix} + {self.keep_suffix} blocks of a {depth}-block model")
        if self.diagonal_last > depth:
            raise ValueError(f"surgery asks for {self.diagonal_last} frame-diagonal blocks; the model has {depth}")

    def skipped_blocks(self, depth: int) -> range:
        """Indices of the middle blocks that skipped steps bypass."""
        return range(self.keep_prefix, depth - self.keep_suffix) if self.skip_t is not None else range(0)

    def skipped_groups(self, t: torch.Tensor, is_clean: torch.Tensor) -> torch.Tensor:
        """(B, G) bool: the noisy groups whose flow time t (B, G) is at or past the skip time."""
        if self.skip_t is None:
            return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        return (t <= self.skip_t) & ~is_clean[None, :]


@dataclass
class Stream:
    """State of one streaming rollout: the KV cache, how many frames are known so far, the surgery (if any)."""

    cache: KVCache
    batch: int
    num_frames: int = 0  # frames observed or generated so far = index of the next frame
    last_frame: torch.Tensor | None = None  # SCD: latest history frame (B, C, H, W), input of the next encoder slot
    surgery: Surgery | None = None  # Causal DiT: fixed for the whole rollout, as the cached K/V depend on it
    history_t: float = 0.0  # flow time at which history frames are read (prefill and commit corrupt them to it)
    history_generator: torch.Generator | None = None  # CPU noise for that corruption (None: the global stream)
    # latest history frame (B, C, H, W): change prediction's x_{i-1}, as read (anchor_is_read) or before corruption
    anchor: torch.Tensor | None = None
    anchor_is_read: bool = False

    def as_history(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, ..., C, H, W) corrupted to the stream's history flow time (unchanged when it is 0)."""
        if self.history_t == 0:
            return frames
        noise = torch.randn(frames.shape, generator=self.history_generator).to(frames.device, frames.dtype)
        return interpolate(frames, noise, torch.full(frames.shape[:-3], self.history_t, device=frames.device))

    def receive(self, frames: torch.Tensor) -> torch.Tensor:
        """Clean frames (B, n, C, H, W) entering the history: the last one becomes the anchor (change prediction's
        x_{i-1}); returns them as the model reads them, corrupted to the history flow time."""
        history = self.as_history(frames)
        self.anchor = (history if self.anchor_is_read else frames)[:, -1]
        return history


class History(NamedTuple):
    """The past a Causal DiT reads in training: frames (B, F, C, H, W) at flow times t (B, F) (0 = clean)."""

    frames: torch.Tensor
    t: torch.Tensor


def _history_t(frames: torch.Tensor, history_t: torch.Tensor | None) -> torch.Tensor:
    """history_t (B, F), zeros (clean history) when None."""
    return torch.zeros(frames.shape[:2], device=frames.device) if history_t is None else history_t


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


def teacher_forcing_layout(frames, x_t, t, actions, history_t=None):
    """The sequence [history x_0..x_{F-2} ; noisy x_0..x_{F-1}] (2F-1 groups) that trains a frame-causal stack in
    one pass: noisy frame i attends to history frames < i and to itself, exactly what a KV cache gives at inference.

    frames, x_t: (B, F, C, H, W); t, actions, history_t (flow times of the history frames, default 0): (B, F)
    -> seq (B, 2F-1, C, H, W), t (B, 2F-1), actions (B, 2F-1), frame_pos (2F-1,), is_clean (2F-1,). The noisy
    frames are the last F groups."""
    f = x_t.shape[1]
    dev = x_t.device
    seq = torch.cat([frames[:, :-1], x_t], dim=1)
    t_all = torch.cat([_history_t(frames, history_t)[:, :-1], t], dim=1)
    a_all = torch.cat([actions[:, :-1], actions], dim=1)
    frame_pos = torch.cat([torch.arange(f - 1, device=dev), torch.arange(f, device=dev)])
    is_clean = torch.arange(2 * f - 1, device=dev) < f - 1
    return seq, t_all, a_all, frame_pos, is_clean


class WorldModel(nn.Module):
    """What both architectures share: config, patchify, RoPE, input checks."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.patchify = Patchify(config.frame_shape, config.patch_size)
        self.rope = RoPE(config.head_dim, config.grid, config.rope_theta)
        self.prediction = PREDICTIONS[config.prediction]  # network output -> velocity

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

    @property
    def encoder_reads_noisy_frame(self) -> bool:
        """True if training_context also needs the frames corrupted to a high flow time (x_enc, t_enc)."""
        return False

    def check_surgery(self, surgery: Surgery | None) -> None:
        if surgery is not None:
            raise ValueError(f"surgeries cut a Causal DiT's blocks; {type(self).__name__} takes none")

    def new_stream(self, batch: int, window: int = 256, surgery: Surgery | None = None) -> Stream:
        """A fresh rollout state in which the next frame sees the last `window` frames (older ones are evicted from
        the KV cache); `surgery` (Causal DiT) holds for the whole rollout."""
        self.check_surgery(surgery)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1 (past frames the next frame sees), got {window!r}")
        return Stream(KVCache(self.cache_layers, self.cache_frames(window), self.config.tokens_per_frame), batch,
                      surgery=surgery, history_t=self.config.history_noise,
                      anchor_is_read=self.prediction.anchor_is_read)

    def cache_frames(self, window: int) -> int:
        """KV cache slots for a window: the `window` past frames plus the frame being generated."""
        return window + 1

    def _check_stream_input(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        self.check_frames(frames)
        if frames.shape[1] < 1:
            raise ValueError("prefill needs at least one frame, got 0")
        if frames.shape[0] != stream.batch:
            raise ValueError(f"stream has batch {stream.batch}, got frames with batch {frames.shape[0]}")
        self.check_actions(actions, frames.shape[:2])

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) as one pass of this model (sampling inside a training step: rollout training).
        Under FSDP2 (parallel.FullyShardedDataParallel registers this as a forward method) it gathers the model's
        own sharded weights first, as forward does; the blocks gather theirs when they run. Plain call otherwise."""
        return fn(*args, **kwargs)

    def corrupt_context(self, ctx, eta: float, generator: torch.Generator | None = None):
        raise ValueError(f"context noise (eta) needs an SCD model; {type(self).__name__} has no context c_i")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, history: torch.Tensor, actions: torch.Tensor,
                history_t: torch.Tensor | None = None, *, K: int = 1, context_noise: float = 0.0,
                surgery: Surgery | None = None,
                x_enc: torch.Tensor | None = None, t_enc: torch.Tensor | None = None) -> torch.Tensor:
        """The training path (what flow_matching_loss calls, so DDP and FSDP see one forward per step): velocities
        of K noisy draws per clip that share one context pass (amortized multi-sample decoding).

        history: (B, F, C, H, W) frames read as the past, at flow times history_t (B, F) (None: clean);
        actions: (B, F); x_t: (K*B, F, C, H, W) noisy frames at t (K*B, F), the K draws stacked along the batch;
        x_enc, t_enc: (B, F, ...) the current frames at a high flow time for noisy_current SCD encoders.
        Returns velocities (K*B, F, C, H, W)."""
        extra = {} if x_enc is None else dict(x_enc=x_enc, t_enc=t_enc)
        ctx = self.training_context(history, actions, history_t, **extra)
        if context_noise > 0:
            ctx = self.corrupt_context(ctx, context_noise)
        if K > 1:  # stack K copies of the context along the batch; (B, ...) -> (K*B, ...)
            ctx, actions = repeat_batch((ctx, actions), K)
        return self.velocity(x_t, t, ctx, actions, surgery=surgery)


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

    def check_surgery(self, surgery: Surgery | None) -> None:
        if surgery is not None:
            surgery.check(self.config.depth)

    def _transformer(self, frames, t, actions, frame_pos, is_clean, cache=None, surgery=None, need_output=True):
        """frames: (B, G, C, H, W) with per-group t, actions (B, G) -> (hidden (B, G, P, D), cond (B, G, D)).

        need_output=False (a pass that only writes the KV cache) lets a surgery stop before its diagonal blocks."""
        cond = self.cond(t, actions)
        rope = self.rope(self.rope.positions(frame_pos))
        mask = group_attention_mask(frame_pos, is_clean, self.config.tokens_per_frame)
        x = self.embed(self.patchify(frames))
        if surgery is None:
            return run_blocks(self.blocks, x, cond, rope, mask, cache), cond
        return self._operated_blocks(x, cond, rope, mask, frame_pos, t, is_clean, cache, surgery, need_output), cond

    def _operated_blocks(self, x, cond, rope, mask, frame_pos, t, is_clean, cache, surgery, need_output):
        """The block stack under a `Surgery` (the fast path is `run_blocks`); x: (B, G, P, D), t: (B, G).

        Skipped middle blocks leave a group's tokens unchanged: not computed when every group skips (streaming),
        selected per group otherwise (training, where the other groups still need the block)."""
        depth = self.config.depth
        self.check_surgery(surgery)
        causal = _with_cached_prefix(mask, cache)
        own_frame = group_attention_mask(frame_pos, torch.zeros_like(is_clean), self.config.tokens_per_frame)
        skipped = surgery.skipped_groups(t, is_clean)
        middle = surgery.skipped_blocks(depth)
        for layer, block in enumerate(self.blocks):
            diagonal = layer >= depth - surgery.diagonal_last
            if diagonal and not need_output:
                break  # frame-diagonal blocks neither read nor write the cache
            if layer in middle and skipped.all():
                continue
            if diagonal:
                out = block(x, cond, rope, own_frame, None, layer)
            else:
                out = block(x, cond, rope, causal, cache, layer)
            x = torch.where(skipped[:, :, None, None], x, out) if layer in middle and skipped.any() else out
        return x

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, frames: torch.Tensor, actions: torch.Tensor, history_t=None) -> History:
        """The history frames (B, F, C, H, W) themselves, read at flow times history_t (B, F) (default 0)."""
        self.check_frames(frames)
        self.check_actions(actions, frames.shape[:2])
        return History(frames, _history_t(frames, history_t))

    def velocity(self, x_t, t, history: History, actions, surgery: Surgery | None = None) -> torch.Tensor:
        """Teacher forcing in one pass over the sequence [history x_0..x_{F-2} ; noisy x_0..x_{F-1}] (2F-1 groups).

        Noisy frame i attends to history frames < i and to itself, exactly what the KV cache gives at inference."""
        self.check_frames(x_t, "x_t")
        f = x_t.shape[1]
        layout = teacher_forcing_layout(history.frames, x_t, t, actions, history.t)
        h, cond = self._transformer(*layout, surgery=surgery)
        out = self.patchify.unpatchify(self.head(h[:, f - 1 :], cond[:, f - 1 :]))  # the F noisy groups
        return self.prediction.to_velocity(out, x_t, t)

    # -- streaming -------------------------------------------------------------------------------------------
    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Run history frames (B, n, C, H, W) at t = stream.history_t and write their K/V to the cache."""
        self._check_stream_input(stream, frames, actions)
        frames = stream.receive(frames)
        b, n = frames.shape[:2]
        n_tokens = n * self.config.tokens_per_frame
        stream.cache.reserve(n_tokens)
        frame_pos = torch.arange(stream.num_frames, stream.num_frames + n, device=frames.device)
        is_clean = torch.ones(n, dtype=torch.bool, device=frames.device)
        t = torch.full((b, n), stream.history_t, device=frames.device)
        self._transformer(frames, t, actions, frame_pos, is_clean, stream.cache, stream.surgery, need_output=False)
        stream.cache.commit(n_tokens)
        stream.num_frames += n

    def frame_context(self, stream: Stream, action: torch.Tensor, commit: bool = True, x_T=None) -> None:
        """A Causal DiT reads its history inside every denoising step: there is nothing to prepare."""
        self.check_actions(action, (stream.batch,))
        return None

    def frame_velocity(self, stream: Stream, ctx, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One denoising step of frame `stream.num_frames`: x_t (B, C, H, W), t (B,) -> velocity (B, C, H, W)."""
        stream.cache.reserve(self.config.tokens_per_frame)  # scratch room for this frame's K/V
        frame_pos = torch.tensor([stream.num_frames], device=x_t.device)
        is_clean = torch.zeros(1, dtype=torch.bool, device=x_t.device)
        h, cond = self._transformer(x_t[:, None], t[:, None], action[:, None], frame_pos, is_clean, stream.cache,
                                    stream.surgery)
        return self.prediction.to_velocity(self.patchify.unpatchify(self.head(h, cond))[:, 0], x_t, t)

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """One extra pass writes the finished frame's K/V as history (read at t = stream.history_t, as trained)."""
        self.prefill(stream, frame[:, None], action[:, None])


class CausalEncoder(nn.Module):
    """l frame-causal blocks over encoder slots that output c_i = E(x_<i, a_<=i).

    encoder_input="previous_frame": slot i holds (x_{i-1}, a_i); slot 0 holds a learned start token instead of a
    frame (the first frame's empty history). encoder_input="noisy_current": clean frames x_j (t = 0, a_j) are the
    history and c_i is read at a slot holding the current frame at a high flow time (x_i^t, t, a_i), the Causal
    DiT's layout; the start token is unused."""

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

    def forward(self, slots, t, actions, frame_pos, is_clean, rope_module: RoPE, cache=None) -> torch.Tensor:
        """slots: (B, G, P, D) with flow times t (0 = clean) and actions (B, G), at frame positions frame_pos (G,),
        clean or not is_clean (G,) (see group_attention_mask) -> c (B, G, P, D)."""
        rope = rope_module(rope_module.positions(frame_pos))
        mask = group_attention_mask(frame_pos, is_clean, slots.shape[2])
        return self.norm(run_blocks(self.blocks, slots, self.cond(t, actions), rope, mask, cache))


class FrameDecoder(nn.Module):
    """m blocks that denoise one frame from [c_i ; noisy x_i]; attention never reaches another frame."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.hidden
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

    @property
    def encoder_reads_noisy_frame(self) -> bool:
        return self.config.encoder_input == "noisy_current"

    def cache_frames(self, window: int) -> int:
        # previous_frame: the slot of the frame being generated holds x_{i-1}, itself one of the window's frames
        return window if not self.encoder_reads_noisy_frame else window + 1

    # -- the two halves --------------------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor, actions: torch.Tensor, history_t=None, x_enc=None, t_enc=None):
        """c_i = E(x_<i, a_<=i) for every frame of a clip: frames (B, F, C, H, W) -> c (B, F, P, D); the history
        frames are read at flow times history_t (B, F) (default 0, clean).

        encoder_input="noisy_current" (supp. E.1) also needs the current frames corrupted for the encoder:
        x_enc (B, F, C, H, W) at flow times t_enc (B, F); c_i then reads x_<i clean and x_enc_i, nothing else."""
        self.check_frames(frames)
        self.check_actions(actions, frames.shape[:2])
        b, f = actions.shape
        if not self.encoder_reads_noisy_frame:
            if x_enc is not None or t_enc is not None:
                raise ValueError("x_enc/t_enc are for encoder_input='noisy_current'; this encoder reads x_{i-1}")
            slots = self.encoder.slots(self.patchify(frames[:, :-1]), with_start=True)
            frame_pos = torch.arange(f, device=frames.device)
            # slot i reads x_{i-1} at its history time; the start slot is clean
            t = torch.cat([torch.zeros(b, 1, device=frames.device), _history_t(frames, history_t)[:, :-1]], dim=1)
            return self.encoder(slots, t, actions, frame_pos, torch.ones_like(frame_pos, dtype=torch.bool), self.rope)
        if x_enc is None or t_enc is None:
            raise ValueError("this SCD's encoder reads the noisy current frame (encoder_input='noisy_current'): "
                             "pass x_enc (B, F, C, H, W) and t_enc (B, F)")
        self.check_frames(x_enc, "x_enc")
        seq, t_all, a_all, frame_pos, is_clean = teacher_forcing_layout(frames, x_enc, t_enc, actions, history_t)
        c = self.encoder(self.encoder.embed(self.patchify(seq)), t_all, a_all, frame_pos, is_clean, self.rope)
        return c[:, f - 1 :]

    def decode(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Velocity of noisy frames given their contexts: x_t (..., C, H, W), t and actions (...), c (..., P, D)."""
        lead = x_t.shape[:-3]
        out = self.decoder(
            self.patchify(x_t).flatten(0, -3), t.reshape(-1), c.flatten(0, -3), actions.reshape(-1), self.rope
        )
        out = self.patchify.unpatchify(out.reshape(*lead, *out.shape[-2:]))
        return self.prediction.to_velocity(out, x_t, t)

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, frames: torch.Tensor, actions: torch.Tensor, history_t=None, x_enc=None, t_enc=None):
        return self.encode(frames, actions, history_t, x_enc, t_enc)

    def velocity(self, x_t, t, c, actions, surgery: Surgery | None = None) -> torch.Tensor:
        self.check_surgery(surgery)
        self.check_frames(x_t, "x_t")
        return self.decode(x_t, t, c, actions)

    def corrupt_context(self, c: torch.Tensor, eta: float, generator: torch.Generator | None = None):
        """c + eta * zeta with zeta ~ N(0, I) (context noise: training augmentation and guidance)."""
        if eta == 0:
            return c
        noise = torch.randn(c.shape, generator=generator, device=generator.device if generator else c.device)
        return c + eta * noise.to(c.device, c.dtype)

    # -- streaming -------------------------------------------------------------------------------------------
    def _stream_encoder(self, stream: Stream, slots: torch.Tensor, t, actions: torch.Tensor, commit: bool):
        """Run slots (B, n, P, D) with flow times t and actions (B, n) at the next positions of the stream, against
        its cache; their K/V stay in the cache if `commit`. Returns c (B, n, P, D)."""
        n = slots.shape[1]
        n_tokens = n * self.config.tokens_per_frame
        stream.cache.reserve(n_tokens)
        frame_pos = torch.arange(stream.num_frames, stream.num_frames + n, device=slots.device)
        is_clean = torch.ones(n, dtype=torch.bool, device=slots.device)
        c = self.encoder(slots, t, actions, frame_pos, is_clean, self.rope, stream.cache)
        if commit:
            stream.cache.commit(n_tokens)
        return c

    def _encoder_step(self, stream: Stream, new_frames: torch.Tensor, actions: torch.Tensor, commit: bool):
        """previous_frame: run slots [last_frame or start, new_frames...] with actions (B, n) -> c (B, n, P, D)."""
        prev = new_frames
        if stream.last_frame is not None:
            prev = torch.cat([stream.last_frame[:, None], new_frames], dim=1)
        start = stream.last_frame is None
        slots = self.encoder.slots(self.patchify(prev), with_start=start)
        t = torch.full(slots.shape[:2], stream.history_t, device=slots.device)
        t[:, :start] = 0.0  # the start token slot is clean
        return self._stream_encoder(stream, slots, t, actions, commit)

    def _cache_history_frames(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """noisy_current: history frames (B, n, C, H, W) at t = stream.history_t write their K/V, like the Causal
        DiT's commit pass."""
        slots = self.encoder.embed(self.patchify(frames))
        t = torch.full(actions.shape, stream.history_t, device=frames.device)
        self._stream_encoder(stream, slots, t, actions, commit=True)

    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Encode known frames (B, n, C, H, W). previous_frame: slots for frames j..j+n-1, the last frame waits
        for its action; noisy_current: all n frames go to the cache as history."""
        self._check_stream_input(stream, frames, actions)
        frames = stream.receive(frames)
        if self.encoder_reads_noisy_frame:
            self._cache_history_frames(stream, frames, actions)
        else:
            self._encoder_step(stream, frames[:, :-1], actions, commit=True)
            stream.last_frame = frames[:, -1]
        stream.num_frames += frames.shape[1]

    def frame_context(self, stream: Stream, action: torch.Tensor, commit: bool = True, x_T=None) -> torch.Tensor:
        """The encoder's once-per-frame pass: c_i (B, P, D) for frame i = stream.num_frames given a_i (B,).

        noisy_current: the slot holds the frame's starting noise x_T (B, C, H, W) at t = 1 (pure noise, supp. E.1)
        and is never committed (the finished frame is cached clean by `commit`)."""
        self.check_actions(action, (stream.batch,))
        if self.encoder_reads_noisy_frame:
            if x_T is None:
                raise ValueError("this SCD's encoder reads the current frame as pure noise: pass its x_T (B, C, H, W)")
            slot = self.encoder.embed(self.patchify(x_T))[:, None]
            t = torch.ones(stream.batch, 1, device=slot.device)
            return self._stream_encoder(stream, slot, t, action[:, None], commit=False)[:, 0]
        empty = torch.zeros(stream.batch, 0, *self.config.frame_shape, device=self.device)
        return self._encoder_step(stream, empty, action[:, None], commit)[:, 0]

    def frame_velocity(self, stream: Stream, c, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One decoder step: x_t (B, C, H, W), t (B,), c (B, P, D) -> velocity (B, C, H, W). No history here."""
        return self.decode(x_t, t, c, action)

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """previous_frame: the finished frame becomes the input of the next encoder slot (encoded once the next
        action is known). noisy_current: an encoder pass at the history flow time caches it now."""
        history = stream.receive(frame[:, None])
        if self.encoder_reads_noisy_frame:
            self._cache_history_frames(stream, history, action[:, None])
        else:
            stream.last_frame = history[:, 0]
        stream.num_frames += 1


def build_model(config: ModelConfig) -> WorldModel:
    """The model class for `config.arch`."""
    return SCD(config) if config.arch == "scd" else CausalDiT(config)
