"""The two halves of Separable Causal Diffusion and their options (models.SCD puts them together).

- `CausalEncoder`: l frame-causal blocks, run once per frame, output c_i = E(x_<i, a_<=i) on the frame's grid.
  What fills its slots is an *encoder input* (supp. E.1), an object that owns its layout in training (and the noise
  it draws there) and in streaming: `PreviousFrame` (the default) or `NoisyCurrent` (for blocks copied from a
  Causal DiT, scd convert).
- `FrameDecoder`: m blocks that denoise one frame from [c_i ; noisy x_i]; how c_i joins the noisy tokens is a
  *fusion* (supplementary Tab. 1), a module that owns its tokens and RoPE positions: `SequenceFusion` (seq_offset,
  the default, or seq_same) or `ChannelFusion` (channel).

A config names them by strings (the serialised form in checkpoints); `encoder_input(name)` and `fusion(name, d)`
turn the names into these objects when a model is built.

Shapes: frames (B, F, C, H, W); slots and contexts c (B, F, P, D) with P tokens per frame and width D.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .flow import interpolate
from .nn import (CachePass, Conditioning, DiTBlock, FinalLayer, RoPE, group_attention_mask, linear_flops, run_blocks,
                 teacher_forcing_layout)


class CausalEncoder(nn.Module):
    """l frame-causal blocks over encoder slots; the encoder input decides what the slots hold. The learned start
    token fills the first slot of previous_frame encoders (the first frame's empty history)."""

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

    def forward(self, slots, t, actions, frame_pos, is_clean, rope: RoPE, cache=None) -> torch.Tensor:
        """slots: (B, G, P, D) with flow times t (0 = clean) and actions (B, G), at frame positions frame_pos (G,),
        clean or not is_clean (G,) (see group_attention_mask) -> c (B, G, P, D). cache: a CachePass whose new frames
        are the G groups."""
        mask = group_attention_mask(frame_pos, is_clean, slots.shape[2])
        return self.norm(run_blocks(self.blocks, slots, self.cond(t, actions), rope(frame_pos), mask, cache))

    def stream(self, cache: CachePass, slots, t, actions, rope: RoPE) -> torch.Tensor:
        """Run slots (B, G, P, D) with flow times t and actions (B, G) as the new frames of a cache pass: their K/V
        stay scratch until the cache commits them. Returns c (B, G, P, D)."""
        is_clean = torch.ones(slots.shape[1], dtype=torch.bool, device=slots.device)
        return self(slots, t, actions, cache.frame_pos, is_clean, rope, cache)


# -- encoder inputs --------------------------------------------------------------------------------------------
# Each is told the SCD model it serves (`scd`: its encoder, patchify, RoPE) and keeps no state of its own; what a
# rollout must remember lives in the Stream. Streaming methods receive history frames already corrupted to the
# stream's history flow time (Stream.receive).

class PreviousFrame:
    """Slot i holds (x_{i-1}, a_i); slot 0 holds the learned start token. One clean encoder pass per frame, once
    its action is known: c_i is ready before the first denoising step and is never recomputed."""

    name = "previous_frame"
    passes_per_frame = 1

    def cache_frames(self, window: int) -> int:
        """KV cache slots for a window: the slot of the frame being made holds x_{i-1}, one of the window's frames."""
        return window

    def training_context(self, scd, history, actions, history_t, x, flow) -> torch.Tensor:
        """c_i for every frame of a clip from its history (B, F, C, H, W) read at flow times history_t (B, F)
        (the clean frames x and the FlowConfig flow are not needed) -> (B, F, P, D)."""
        b, f = actions.shape
        slots = scd.encoder.slots(scd.patchify(history[:, :-1]), with_start=True)
        frame_pos = torch.arange(f, device=history.device)
        # slot i reads x_{i-1} at its history time; the start slot is clean
        t = torch.cat([torch.zeros(b, 1, device=history.device), history_t[:, :-1]], dim=1)
        return scd.encoder(slots, t, actions, frame_pos, torch.ones_like(frame_pos, dtype=torch.bool), scd.rope)

    def _slots(self, scd, stream, prev: torch.Tensor, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots (B, n, P, D) holding the frames prev (B, n - start, C, H, W), after the start token when `start`,
        and their flow times (B, n)."""
        slots = scd.encoder.slots(scd.patchify(prev), with_start=start)
        t = torch.full(slots.shape[:2], stream.history_t, device=slots.device)
        t[:, :start] = 0.0  # the start token slot is clean
        return slots, t

    def prefill(self, scd, stream, history: torch.Tensor, actions: torch.Tensor) -> None:
        """Slots of history frames j..j+n-1 go to the cache, each pass embedding its own; the last frame waits for
        the next action."""
        start = stream.last_frame is None  # the first slot holds the start token, else the last frame so far
        prev = history[:, :-1] if start else torch.cat([stream.last_frame[:, None], history[:, :-1]], dim=1)

        def run(part: slice, cache: CachePass) -> None:
            first = start and part.start == 0
            slots, t = self._slots(scd, stream, prev[:, part.start - start + first : part.stop - start], first)
            scd.encoder.stream(cache, slots, t, actions[:, part], scd.rope)

        stream.cache.write_history(actions.shape[1], run)
        stream.last_frame = history[:, -1].contiguous()  # the layout of a committed frame's

    def frame_context(self, scd, stream, action: torch.Tensor, noise: torch.Tensor, null_branch: bool = False):
        """The slot (x_{i-1}, a_i) -> c_i (B, P, D), with null_branch also (x_{i-1}, null) -> (B, 2, P, D); the
        first slot's K/V wait in the cache's scratch space for `commit`."""
        start = stream.last_frame is None
        prev = torch.zeros(stream.batch, 0, *scd.config.frame_shape, device=scd.device) if start else \
            stream.last_frame[:, None]
        slots, t = self._slots(scd, stream, prev, start)
        actions = _with_null_branch(scd, action, null_branch)
        g = actions.shape[1]
        c = scd.encoder.stream(stream.cache.open(1, branches=g), slots.expand(-1, g, -1, -1), t.expand(-1, g),
                               actions, scd.rope)
        stream.pending_action = action
        return c if null_branch else c[:, 0]

    def commit(self, scd, stream, history: torch.Tensor, action: torch.Tensor) -> None:
        """Frame i is done: slot i (x_{i-1}, a_i) joins the cache, and history (B, 1, C, H, W) fills slot i + 1
        once a_{i+1} is known. When the scratch holds another action's slot (a context asked for after the frame's
        own), slot i is encoded again."""
        if stream.pending_action is not action:
            self.frame_context(scd, stream, action, None)
        stream.cache.commit(1)
        stream.pending_action = None
        stream.last_frame = history[:, 0]


class NoisyCurrent:
    """The Causal DiT's teacher-forcing layout (supp. E.1, "input reparameterisation"): clean frames x_j (a_j) are
    the history and c_i is read at a slot holding the current frame corrupted to a high flow time, x_i at t_enc
    (training: t_enc ~ U(flow.encoder_t_min, 1); inference: the frame's starting noise, t = 1). Exactly the inputs
    that encoder blocks copied from a Causal DiT saw. Two encoder passes per frame: the pure-noise pass that reads
    frame i and the clean pass that caches it when it is done. The start token is unused."""

    name = "noisy_current"
    passes_per_frame = 2

    def cache_frames(self, window: int) -> int:
        """KV cache slots for a window: the `window` past frames plus the noisy slot of the frame being made."""
        return window + 1

    def training_context(self, scd, history, actions, history_t, x, flow) -> torch.Tensor:
        """c_i for every frame of a clip: draws this input's training noise, the current frames x (B, F, C, H, W)
        (the clean flow variable) at t_enc ~ U(flow.encoder_t_min, 1), and reads them with the history."""
        if x is None:
            raise ValueError("this SCD's encoder reads the noisy current frame (encoder_input='noisy_current'): "
                             "pass x, the clean frames (B, F, C, H, W)")
        t_enc = flow.encoder_t_min + (1 - flow.encoder_t_min) * torch.rand(x.shape[:2], device=x.device)
        x_enc = interpolate(x, torch.randn_like(x), t_enc)
        return self.encode(scd, history, actions, history_t, x_enc, t_enc)

    def encode(self, scd, history, actions, history_t, x_enc, t_enc) -> torch.Tensor:
        """c_i (B, F, P, D) reads the history frames < i (at history_t) and x_enc_i (B, F, C, H, W) at t_enc_i
        (B, F), nothing else."""
        scd.check_frames(x_enc, "x_enc")
        f = x_enc.shape[1]
        seq, t_all, a_all, frame_pos, is_clean = teacher_forcing_layout(history, x_enc, t_enc, actions, history_t)
        c = scd.encoder(scd.encoder.embed(scd.patchify(seq)), t_all, a_all, frame_pos, is_clean, scd.rope)
        return c[:, f - 1 :]

    def _cache(self, scd, stream, history: torch.Tensor, actions: torch.Tensor) -> None:
        """History frames (B, n, C, H, W) at t = stream.history_t write their K/V, like the Causal DiT's commit."""
        t = torch.full(actions.shape, stream.history_t, device=history.device)
        stream.cache.write_history(actions.shape[1], lambda part, cache: scd.encoder.stream(
            cache, scd.encoder.embed(scd.patchify(history[:, part])), t[:, part], actions[:, part], scd.rope))

    def prefill(self, scd, stream, history: torch.Tensor, actions: torch.Tensor) -> None:
        self._cache(scd, stream, history, actions)

    def frame_context(self, scd, stream, action: torch.Tensor, noise: torch.Tensor, null_branch: bool = False):
        """A slot holding the frame's starting noise x_T (B, C, H, W) at t = 1 -> c_i (B, P, D), with null_branch
        also the null action's -> (B, 2, P, D); never cached."""
        actions = _with_null_branch(scd, action, null_branch)
        g = actions.shape[1]
        slot = scd.encoder.embed(scd.patchify(noise))[:, None].expand(-1, g, -1, -1)
        t = torch.ones(actions.shape, device=slot.device)
        c = scd.encoder.stream(stream.cache.open(1, branches=g), slot, t, actions, scd.rope)
        return c if null_branch else c[:, 0]

    def commit(self, scd, stream, history: torch.Tensor, action: torch.Tensor) -> None:
        """A clean encoder pass caches the finished frame, history (B, 1, C, H, W), at the history flow time."""
        self._cache(scd, stream, history, action[:, None])


def _with_null_branch(scd, action: torch.Tensor, null_branch: bool) -> torch.Tensor:
    """The action (B,) of a frame, with null_branch followed by the null action -> (B, 1 or 2)."""
    if not null_branch:
        return action[:, None]
    return torch.stack([action, torch.full_like(action, scd.null_action)], dim=1)


def encoder_input(name: str):
    """The encoder input a config names (ModelConfig.encoder_input)."""
    return {cls.name: cls for cls in (PreviousFrame, NoisyCurrent)}[name]()


# -- fusions ---------------------------------------------------------------------------------------------------
class SequenceFusion(nn.Module):
    """[c_i ; x_i] as one sequence of 2P tokens, the noisy ones at RoPE frame 1 and c_i at `context_frame`
    (relative positions, so the same for every frame): 0 puts c_i one frame earlier (seq_offset, preferred in
    Tab. 1), 1 at the noisy frame's own position (seq_same)."""

    attends_context = True  # the noisy tokens attend to c_i's tokens as keys

    def __init__(self, context_frame: float):
        super().__init__()
        self.context_frame = context_frame
        self.frame_pos = (context_frame, 1.0)  # RoPE frame positions of the two groups of tokens

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c, x: (N, P, D) -> tokens (N, 1, 2P, D)."""
        return torch.cat([c.to(x.dtype), x], dim=1)[:, None]

    def tokens(self, p: int) -> int:
        return 2 * p

    def flops(self, rows: int) -> int:
        return 0


class ChannelFusion(nn.Linear):
    """[c_i | x_i] concatenated per token and mixed by a Linear initialised to [I | I] (it starts as c_i + x_i):
    P tokens at RoPE frame 1, which no longer attend to c_i as keys."""

    attends_context = False

    def __init__(self, hidden: int):
        super().__init__(2 * hidden, hidden)
        with torch.no_grad():
            self.weight.copy_(torch.cat([torch.eye(hidden), torch.eye(hidden)], dim=1))
            self.bias.zero_()
        self.keep_init = True
        self.frame_pos = (1.0,)  # RoPE frame position of the fused tokens

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c, x: (N, P, D) -> tokens (N, 1, P, D)."""
        return super().forward(torch.cat([c.to(x.dtype), x], dim=-1))[:, None]

    def tokens(self, p: int) -> int:
        return p

    def flops(self, rows: int) -> int:
        return linear_flops(self, rows)


def fusion(name: str, hidden: int) -> nn.Module:
    """The fusion a config names (ModelConfig.fusion)."""
    if name == "channel":
        return ChannelFusion(hidden)
    return SequenceFusion(context_frame={"seq_offset": 0.0, "seq_same": 1.0}[name])


class FrameDecoder(nn.Module):
    """m blocks that denoise one frame from its context c_i and noisy x_i; attention never reaches another frame."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.hidden
        self.embed = nn.Linear(config.patch_dim, d)
        self.cond = Conditioning(d, config.num_actions)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.head_dim, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.head = FinalLayer(d, config.patch_dim)
        self.fuse = fusion(config.fusion, d)  # built last: channel fusion draws its Linear's default init here
        # the fused tokens' RoPE, the same at every step of every frame: (fused tokens, head_dim/2) each
        cos, sin = RoPE(config.head_dim, config.grid, config.rope_theta)(torch.tensor(self.fuse.frame_pos))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x_t, t, c, actions) -> torch.Tensor:
        """x_t: (N, C, H, W) patches (N, P, patch_dim); t, actions: (N,); c: (N, P, D) -> velocity patches."""
        cond = self.cond(t, actions)[:, None]  # (N, 1, D)
        x = self.embed(x_t)  # (N, P, D)
        h = run_blocks(self.blocks, self.fuse(c, x), cond, (self.rope_cos, self.rope_sin))
        return self.head(h[:, :, -x.shape[1] :], cond)[:, 0]  # (N, P, patch_dim)
