"""The two world models: the Causal DiT baseline and Separable Causal Diffusion (SCD).

Both share one interface, so the objective, the sampler and the rollout never look at the architecture:

Training (teacher forcing, all frames of a clip at once; `forward` runs both steps):
    ctx = model.training_context(history, actions, history_t, x, flow)  # Causal DiT: History; SCD: c = E(x_<i, a_<=i)
    v = model.velocity(x_t, t, ctx, actions)           # predicted velocity for every frame

Streaming (one frame at a time, with a KV cache):
    stream = model.new_stream(batch, window, branches)
    model.prefill(stream, context_frames, context_actions)
    ctx_i = model.frame_context(stream, a_i, x_T)      # SCD: the encoder's pass for frame i (x_T: its starting noise)
    v = model.frame_velocity(stream, ctx_i, x_t, t, a_i)   # one denoising step
    model.commit(stream, x_i, a_i)                     # the finished frame becomes history

`frame_context` only reads the stream (any number of calls per frame); `commit` is what moves it on. Guidance
branches run in the same passes as the frame: `frame_context(..., null_branch=True)` adds the null action's
context (stacked after the frame's own), and `frame_velocity` takes G versions of the frame, x_t (B, G, C, H, W)
with t and actions (B, G); a Causal DiT's G versions need a stream opened with `branches=G`. Each model also
answers what it costs and what it is: `block_passes`, `frame_flops`, `describe`, `denoising_stack` (the blocks
that run at every denoising step, for probes).

Shapes: frames (B, F, C, H, W) in the model's data space (pixels in [-1, 1] or latents); actions (B, F) int;
flow time t (B, F) in [0, 1] with t = 1 pure noise. actions[:, i] is the action that produced frame i.
History frames are read at their own flow time history_t (B, F) (0 = clean; noise augmentation, see
FlowConfig.history_noise); in a stream every history frame is read at `stream.history_t` (prefill and commit take
clean frames and corrupt them). The network's output is turned into a velocity by `config.prediction`
(flow.PREDICTIONS), so callers always get velocities. x_t is the flow variable: the noisy frame, or with change
prediction the noisy change from the anchor x_{i-1} (`prediction.to_flow` / `to_frame` convert).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .flow import PREDICTIONS, FlowConfig, interpolate, repeat_batch
from .nn import (
    CachePass,
    Conditioning,
    DiTBlock,
    FinalLayer,
    KVCache,
    Patchify,
    RoPE,
    group_attention_mask,
    init_linear_layers,
    linear_flops,
    run_blocks,
    teacher_forcing_layout,
)
from .separable import CausalEncoder, FrameDecoder, encoder_input


@dataclass
class Stream:
    """State of one streaming rollout: the KV cache, how many frames are known so far, how history is read."""

    cache: KVCache
    batch: int
    num_frames: int = 0  # frames observed or generated so far = index of the next frame
    history_t: float = 0.0  # flow time at which history frames are read (prefill and commit corrupt them to it)
    history_generator: torch.Generator | None = None  # CPU noise for that corruption (None: the global stream)
    # latest history frame (B, C, H, W): change prediction's x_{i-1}, as read (anchor_is_read) or before corruption
    anchor: torch.Tensor | None = None
    anchor_is_read: bool = False
    # SCD previous_frame encoders: the latest history frame (B, C, H, W), input of the next encoder slot, and the
    # action whose slot frame_context left uncommitted in the cache
    last_frame: torch.Tensor | None = None
    pending_action: torch.Tensor | None = None

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
        self.anchor = (history if self.anchor_is_read else frames)[:, -1].contiguous()  # one layout for every frame
        return history

    def concat(self, other: "Stream") -> "Stream":
        """This stream's rows followed by `other`'s: rows that started later, at the same frame position (their
        caches made with `first_frame`); both between two frames. The history noise is drawn from this stream's."""
        if self.pending_action is not None or other.pending_action is not None:
            raise ValueError("streams take or give rows between two frames, not while one is being made")
        if self.history_t != other.history_t:
            raise ValueError(f"cannot concatenate streams that read history at flow times {self.history_t} and "
                             f"{other.history_t}")

        def cat(a, b):
            return None if a is None and b is None else torch.cat([a, b])

        return replace(self, cache=self.cache.concat(other.cache), batch=self.batch + other.batch,
                       anchor=cat(self.anchor, other.anchor), last_frame=cat(self.last_frame, other.last_frame))

    def select(self, rows: torch.Tensor) -> "Stream":
        """A stream of the given rows (a (R,) index) only, between two frames."""
        if self.pending_action is not None:
            raise ValueError("streams take or give rows between two frames, not while one is being made")

        def pick(x):
            return None if x is None else x.index_select(0, rows.to(x.device))

        return replace(self, cache=self.cache.select(rows), batch=rows.numel(), anchor=pick(self.anchor),
                       last_frame=pick(self.last_frame))


class History(NamedTuple):
    """The past a Causal DiT reads in training: frames (B, F, C, H, W) at flow times t (B, F) (0 = clean)."""

    frames: torch.Tensor
    t: torch.Tensor


class DenoisingStack(NamedTuple):
    """The modules that run at every denoising step, where probes read a model: `cond` starts every pass and
    `head` ends every velocity pass; the current frame's tokens are the last tokens_per_frame of a block's output."""

    name: str
    cond: nn.Module
    blocks: nn.ModuleList
    head: nn.Module
    labels: list[str]
    attends_context: bool  # the current frame's queries attend to keys of other frames (the KV cache, or c_i)


def _history_t(frames: torch.Tensor, history_t: torch.Tensor | None) -> torch.Tensor:
    """history_t (B, F), zeros (clean history) when None."""
    return torch.zeros(frames.shape[:2], device=frames.device) if history_t is None else history_t


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _frame_cost(context: int, step: int, steps: int) -> dict[str, int]:
    return {"context": context, "denoise": steps * step, "total": context + steps * step}


class WorldModel(nn.Module):
    """What both architectures share: config, patchify, RoPE, input checks, the training path, the stream."""

    cost_note: str | None = None  # what `scd info` adds under a table of block passes

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

    @property
    def codec(self):
        """The frame codec (scd.codec) between uint8 game frames and this model's frames: the one it was trained
        with (load_checkpoint and training attach it, `use_codec`), else the pixel codec of its RGB frame_shape.
        Not a submodule: its weights are not the model's (state_dict, optimiser, `.to()`; it keeps its device)."""
        if self.__dict__.get("_codec") is None:
            from .codec import PixelCodec

            c, h, w = self.config.frame_shape
            if c != 3:
                raise ValueError(f"this model works on {c}x{h}x{w} frames and has no codec to turn game frames into "
                                 "them: train it with a codec (scd train --codec) or attach one with use_codec()")
            self.__dict__["_codec"] = PixelCodec((h, w, 3))
        return self.__dict__["_codec"]

    def use_codec(self, codec) -> "WorldModel":
        """Attach the codec whose latents this model works on (checked against its frame_shape); returns the model."""
        codec.check_frame_shape(self.config.frame_shape)
        self.__dict__["_codec"] = codec
        return self

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
        if torch.compiler.is_compiling():  # a compiled step: the caller checked the values (they need a sync)
            return
        if actions.numel() and (actions.min() < 0 or actions.max() > self.null_action):
            bad = actions[(actions < 0) | (actions > self.null_action)][0].item()
            raise ValueError(
                f"unknown action id {bad}: this model knows {self.config.num_actions} actions "
                f"(ids 0..{self.config.num_actions - 1}; {self.null_action} is the null action)"
            )

    def new_stream(self, batch: int, window: int = 256, branches: int = 1, first_frame: int = 0) -> Stream:
        """A fresh rollout state in which the next frame sees the last `window` frames (older ones leave the KV
        cache), and whose cached passes may run the frame being made in `branches` versions (guidance).
        first_frame: the frame position of its first frame (so that it can join a stream that is further on)."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1 (past frames the next frame sees), got {window!r}")
        cache = KVCache(self.cache_layers, self.cache_frames(window), self.config.tokens_per_frame, branches - 1,
                        self.device, first_frame)
        return Stream(cache, batch, history_t=self.config.history_noise, anchor_is_read=self.prediction.anchor_is_read)

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

    def corrupt_context(self, ctx, eta: float, noise: torch.Tensor | None = None):
        raise ValueError(f"context noise (eta) needs an SCD model; {type(self).__name__} has no context c_i")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, history: torch.Tensor, actions: torch.Tensor,
                history_t: torch.Tensor | None = None, x: torch.Tensor | None = None,
                flow: FlowConfig = FlowConfig()) -> torch.Tensor:
        """The training path (what flow_matching_loss calls, so DDP and FSDP see one forward per step): velocities
        of flow.K noisy draws per clip that share one context pass (amortized multi-sample decoding).

        history: (B, F, C, H, W) frames read as the past, at flow times history_t (B, F) (None: clean);
        actions: (B, F); x: (B, F, C, H, W) the clean flow variable of every frame, for a context pass that reads
        the current frames (SCD's noisy_current encoder input corrupts them itself); x_t: (K*B, F, C, H, W) noisy
        frames at t (K*B, F), the K draws stacked along the batch. Returns velocities (K*B, F, C, H, W)."""
        ctx = self.training_context(history, actions, history_t, x, flow)
        if flow.context_noise > 0:
            ctx = self.corrupt_context(ctx, flow.context_noise)
        if flow.K > 1:  # stack K copies of the context along the batch; (B, ...) -> (K*B, ...)
            ctx, actions = repeat_batch((ctx, actions), flow.K)
        return self.velocity(x_t, t, ctx, actions)

    # -- what the model costs and is -------------------------------------------------------------------------
    def describe(self, steps: int) -> dict:
        """Size and cost per frame with `steps` denoising steps (what `scd info` prints)."""
        cfg = self.config
        return {"arch": cfg.arch, "params": _parameters(self), "hidden": cfg.hidden, "heads": cfg.heads,
                "tokens_per_frame": cfg.tokens_per_frame, "frame_shape": list(cfg.frame_shape), "steps": steps,
                "block_passes_per_frame": self.block_passes(steps)}


class CausalDiT(WorldModel):
    """L DiT blocks with frame-causal attention (bidirectional inside a frame) at every denoising step."""

    cost_note = ("Causal DiT: L x S denoising passes (the paper's count) + L for the clean pass that caches the "
                 "finished frame.")

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
        self.surgery = None  # a surgery.Surgery that every pass runs under (set by surgery.operated)

    @property
    def cache_layers(self) -> int:
        return self.config.depth

    def _transformer(self, frames, t, actions, frame_pos, is_clean, cache=None, need_output=True):
        """frames: (B, G, C, H, W) with per-group t, actions (B, G) -> (hidden (B, G, P, D), cond (B, G, D)).

        cache: a CachePass whose new frames are the G groups. need_output=False (a pass that only writes the KV
        cache) lets a surgery stop before its diagonal blocks."""
        cond = self.cond(t, actions)
        rope = self.rope(frame_pos)
        mask = group_attention_mask(frame_pos, is_clean, self.config.tokens_per_frame)
        x = self.embed(self.patchify(frames))
        if self.surgery is None:
            return run_blocks(self.blocks, x, cond, rope, mask, cache), cond
        return self.surgery.run_blocks(self.blocks, x, cond, rope, mask, frame_pos, t, is_clean, cache,
                                       need_output), cond

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, history: torch.Tensor, actions: torch.Tensor, history_t=None, x=None,
                         flow: FlowConfig = FlowConfig()) -> History:
        """The history frames (B, F, C, H, W) themselves, read at flow times history_t (B, F) (default 0): the
        Causal DiT reads its past inside every step (the current frames x and the flow options are not needed)."""
        self.check_frames(history)
        self.check_actions(actions, history.shape[:2])
        return History(history, _history_t(history, history_t))

    def velocity(self, x_t, t, history: History, actions) -> torch.Tensor:
        """Teacher forcing in one pass over the sequence [history x_0..x_{F-2} ; noisy x_0..x_{F-1}] (2F-1 groups).

        Noisy frame i attends to history frames < i and to itself, exactly what the KV cache gives at inference."""
        self.check_frames(x_t, "x_t")
        f = x_t.shape[1]
        layout = teacher_forcing_layout(history.frames, x_t, t, actions, history.t)
        h, cond = self._transformer(*layout)
        out = self.patchify.unpatchify(self.head(h[:, f - 1 :], cond[:, f - 1 :]))  # the F noisy groups
        return self.prediction.to_velocity(out, x_t, t)

    # -- streaming -------------------------------------------------------------------------------------------
    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Run history frames (B, n, C, H, W) at t = stream.history_t and write their K/V to the cache, in passes
        of at most stream.cache.chunk frames."""
        self._check_stream_input(stream, frames, actions)
        frames = stream.receive(frames)
        t = torch.full(actions.shape, stream.history_t, device=frames.device)

        def run(part: slice, cache: CachePass) -> None:
            is_clean = torch.ones(part.stop - part.start, dtype=torch.bool, device=frames.device)
            self._transformer(frames[:, part], t[:, part], actions[:, part], cache.frame_pos, is_clean, cache,
                              need_output=False)

        stream.cache.write_history(frames.shape[1], run)
        stream.num_frames += frames.shape[1]

    def frame_context(self, stream: Stream, action: torch.Tensor, noise: torch.Tensor, null_branch: bool = False):
        """A Causal DiT reads its history inside every denoising step: there is nothing to prepare."""
        self.check_actions(action, (stream.batch,))
        return None

    def frame_velocity(self, stream: Stream, ctx, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One denoising step of frame `stream.num_frames`: x_t (B, [G,] C, H, W), t and action (B, [G]) ->
        velocity like x_t. The G versions of the frame (guidance branches) attend the history and themselves only,
        in one pass; their K/V are scratch (the clean pass of `commit` writes the frame's)."""
        x, t_g, a = (x_t, t, action) if x_t.ndim == 5 else (x_t[:, None], t[:, None], action[:, None])
        cache = stream.cache.open(1, branches=x.shape[1])
        is_clean = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        h, cond = self._transformer(x, t_g, a, cache.frame_pos, is_clean, cache)
        v = self.prediction.to_velocity(self.patchify.unpatchify(self.head(h, cond)), x, t_g)
        return v if x_t.ndim == 5 else v[:, 0]

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """One extra pass writes the finished frame's K/V as history (read at t = stream.history_t, as trained)."""
        self.prefill(stream, frame[:, None], action[:, None])

    # -- what it costs and is --------------------------------------------------------------------------------
    def block_passes(self, steps: int) -> int:
        """Block passes per frame: L x S denoising passes + L for the clean pass that writes the finished frame's
        K/V (the paper's Tab. 5 counts L x S)."""
        return self.config.depth * steps + self.config.depth

    def block_pass_formula(self, steps: int) -> str:
        return f"{self.config.depth}x{steps} + {self.config.depth}"

    def frame_flops(self, steps: int, history: int, batch: int = 1, branches: int = 1) -> dict[str, int]:
        """Analytical FLOPs to stream one frame whose history holds `history` frames: "context", the clean pass
        that writes the finished frame's K/V; "denoise", the S steps; "total". Matmuls and attention only (what
        torch.utils.flop_counter counts); the noisy frame attends its history and itself. With guidance the S
        steps run the frame in `branches` versions; every pass, the clean one too, attends the history and the
        cache's slots of all versions (static shapes; a mask hides the others)."""
        p = self.config.tokens_per_frame

        def trunk(n: int, keys: int) -> int:
            return (self.cond.flops(n) + linear_flops(self.embed, n * p)
                    + sum(block.flops(n, p, keys) for block in self.blocks))

        g = branches
        step = trunk(batch * g, (history + g) * p) + self.head.flops(batch * g, p)
        return _frame_cost(trunk(batch, (history + g) * p), step, steps)

    def describe(self, steps: int) -> dict:
        return {**super().describe(steps), "blocks": str(self.config.depth)}

    def denoising_stack(self) -> DenoisingStack:
        return DenoisingStack("Causal DiT", self.cond, self.blocks, self.head,
                              [f"{i}" for i in range(len(self.blocks))], True)

    def labelled_blocks(self) -> list[tuple[str, nn.Module]]:
        """(label, block) for every block, in order."""
        return [(f"{i}", b) for i, b in enumerate(self.blocks)]


class SCD(WorldModel):
    """Separable Causal Diffusion: a causal encoder run once per frame + a frame-wise diffusion decoder
    (separable.py: the two halves, what the encoder reads and how the decoder fuses c_i)."""

    def __init__(self, config: ModelConfig):
        if config.arch != "scd":
            raise ValueError(f"SCD needs arch='scd', got {config.arch!r}")
        super().__init__(config)
        self.encoder = CausalEncoder(config)
        self.decoder = FrameDecoder(config)
        self.encoder_input = encoder_input(config.encoder_input)
        init_linear_layers(self)

    @property
    def cache_layers(self) -> int:
        return self.config.encoder_depth

    def cache_frames(self, window: int) -> int:
        return self.encoder_input.cache_frames(window)

    # -- the two halves --------------------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor, actions: torch.Tensor, history_t=None, x=None,
               flow: FlowConfig = FlowConfig()) -> torch.Tensor:
        """c_i = E(x_<i, a_<=i) for every frame of a clip: frames (B, F, C, H, W), read at flow times history_t
        (B, F) (default 0, clean) -> c (B, F, P, D). An encoder that reads the current frames (noisy_current)
        corrupts the clean x (B, F, C, H, W) itself, as `flow` says."""
        self.check_frames(frames)
        self.check_actions(actions, frames.shape[:2])
        return self.encoder_input.training_context(self, frames, actions, _history_t(frames, history_t), x, flow)

    def decode(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Velocity of noisy frames given their contexts: x_t (..., C, H, W), t and actions (...), c (..., P, D)."""
        lead = x_t.shape[:-3]
        out = self.decoder(
            self.patchify(x_t).flatten(0, -3), t.reshape(-1), c.flatten(0, -3), actions.reshape(-1))
        out = self.patchify.unpatchify(out.reshape(*lead, *out.shape[-2:]))
        return self.prediction.to_velocity(out, x_t, t)

    # -- training --------------------------------------------------------------------------------------------
    def training_context(self, history, actions, history_t=None, x=None, flow: FlowConfig = FlowConfig()):
        return self.encode(history, actions, history_t, x, flow)

    def velocity(self, x_t, t, c, actions) -> torch.Tensor:
        self.check_frames(x_t, "x_t")
        return self.decode(x_t, t, c, actions)

    def corrupt_context(self, c: torch.Tensor, eta: float, noise: torch.Tensor | None = None):
        """c + eta * zeta with zeta ~ N(0, I) (context noise: training augmentation and guidance): `noise`, like c
        (B, ..., P, D), or drawn from the global stream."""
        if eta == 0:
            return c
        noise = torch.randn(c.shape, device=c.device) if noise is None else noise
        return c + eta * noise.to(c.device, c.dtype)

    # -- streaming (the encoder input lays out the encoder's slots) ------------------------------------------
    def prefill(self, stream: Stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Encode known frames (B, n, C, H, W) with their actions (B, n) into the stream."""
        self._check_stream_input(stream, frames, actions)
        self.encoder_input.prefill(self, stream, stream.receive(frames), actions)
        stream.num_frames += frames.shape[1]

    def frame_context(self, stream: Stream, action: torch.Tensor, noise: torch.Tensor,
                      null_branch: bool = False) -> torch.Tensor:
        """The encoder's once-per-frame pass: c_i (B, P, D) for frame i = stream.num_frames given a_i (B,) and the
        frame's starting noise x_T (B, C, H, W) (what a noisy_current encoder reads). null_branch: also the null
        action's context, in the same pass -> (B, 2, P, D), the frame's own first (needs a stream with 2 branches)."""
        self.check_actions(action, (stream.batch,))
        return self.encoder_input.frame_context(self, stream, action, noise, null_branch)

    def frame_velocity(self, stream: Stream, c, x_t: torch.Tensor, t: torch.Tensor, action: torch.Tensor):
        """One decoder step: x_t (B, [G,] C, H, W), t and action (B, [G]), c (B, [G,] P, D) -> velocity like x_t.
        No history here."""
        return self.decode(x_t, t, c, action)

    def commit(self, stream: Stream, frame: torch.Tensor, action: torch.Tensor) -> None:
        """The finished frame (B, C, H, W) becomes history, read at stream.history_t."""
        history = stream.receive(frame[:, None])
        self.encoder_input.commit(self, stream, history, action)
        stream.num_frames += 1

    # -- what it costs and is --------------------------------------------------------------------------------
    def block_passes(self, steps: int) -> int:
        """Block passes per frame: l encoder blocks once (twice for noisy_current: a pure-noise pass reads the
        frame, a clean pass caches it) + m decoder blocks at each of the S steps."""
        cfg = self.config
        return self.encoder_input.passes_per_frame * cfg.encoder_depth + steps * cfg.decoder_depth

    def block_pass_formula(self, steps: int) -> str:
        passes = self.encoder_input.passes_per_frame
        return f"{f'{passes}x' if passes > 1 else ''}{self.config.encoder_depth} + {steps}x{self.config.decoder_depth}"

    def frame_flops(self, steps: int, history: int, batch: int = 1, branches: int = 1) -> dict[str, int]:
        """Analytical FLOPs to stream one frame whose history holds `history` frames: "context", the encoder's
        passes (its slot attends the history); "denoise", the S decoder steps over the fused tokens; "total".
        Matmuls and attention only (what torch.utils.flop_counter counts). With guidance the encoder pass that
        reads c_i and the S steps run the frame in `branches` versions; encoder passes attend the history and the
        slots of all versions (static shapes; a mask hides the others)."""
        p, g = self.config.tokens_per_frame, branches
        enc, dec = self.encoder, self.decoder

        def encoder_pass(versions: int) -> int:
            return (linear_flops(enc.embed, batch * p) + enc.cond.flops(batch * versions)
                    + sum(block.flops(batch * versions, p, (history + g) * p) for block in enc.blocks))

        n = batch * g
        tokens = dec.fuse.tokens(p)
        step = (dec.cond.flops(n) + linear_flops(dec.embed, n * p) + dec.fuse.flops(n * p)
                + sum(block.flops(n, tokens, tokens) for block in dec.blocks) + dec.head.flops(n, p))
        # the pass that reads c_i runs every version; a second pass (noisy_current) caches the finished frame
        context = encoder_pass(g) + (self.encoder_input.passes_per_frame - 1) * encoder_pass(1)
        return _frame_cost(context, step, steps)

    def describe(self, steps: int) -> dict:
        cfg = self.config
        return {**super().describe(steps), "blocks": f"{cfg.encoder_depth}+{cfg.decoder_depth}",
                "encoder_params": _parameters(self.encoder), "decoder_params": _parameters(self.decoder),
                "encoder_input": cfg.encoder_input}

    def denoising_stack(self) -> DenoisingStack:
        d = self.decoder
        return DenoisingStack("SCD decoder", d.cond, d.blocks, d.head, [f"dec{i}" for i in range(len(d.blocks))],
                              d.fuse.attends_context)

    def labelled_blocks(self) -> list[tuple[str, nn.Module]]:
        """(label, block) for every block, in order: encoder then decoder."""
        return ([(f"enc{i}", b) for i, b in enumerate(self.encoder.blocks)]
                + [(f"dec{i}", b) for i, b in enumerate(self.decoder.blocks)])


MODELS = {"causal_dit": CausalDiT, "scd": SCD}


def build_model(config: ModelConfig) -> WorldModel:
    """The model class for `config.arch`."""
    return MODELS[config.arch](config)
