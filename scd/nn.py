"""Building blocks shared by both architectures: patchify, conditioning, 3-axis RoPE, the teacher-forcing layout and
mask, the KV cache, the DiT block and a stack runner, and what each costs in FLOPs.

Token layout inside the transformer: (B, G, T, D) where G = attention groups (usually frames), T = tokens per group.
Conditioning is per group: (B, G, D). Attention flattens groups to a sequence of G*T tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Patchify(nn.Module):
    """(..., C, H, W) frames <-> (..., P, C*p*p) patch vectors, P = (H/p)*(W/p) in row-major order."""

    def __init__(self, frame_shape: tuple[int, int, int], patch_size: int):
        super().__init__()
        self.frame_shape = tuple(frame_shape)
        self.p = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.frame_shape
        if tuple(x.shape[-3:]) != self.frame_shape:
            raise ValueError(f"frames must have shape (..., {c}, {h}, {w}), got {tuple(x.shape)}")
        p, lead = self.p, x.shape[:-3]
        x = x.reshape(lead.numel(), c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (N, h/p, w/p, C, p, p)
        return x.reshape(*lead, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        c, h, w = self.frame_shape
        p, lead = self.p, tokens.shape[:-2]
        x = tokens.reshape(lead.numel(), h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (N, C, h/p, p, w/p, p)
        return x.reshape(*lead, c, h, w)


class Conditioning(nn.Module):
    """Embedding of (flow time t, action a) for adaLN: sinusoidal(t) -> MLP, plus a learned action embedding.

    Action id `num_actions` is the null action used for action dropout and classifier-free guidance."""

    def __init__(self, hidden: int, num_actions: int, freq_dim: int = 256):
        super().__init__()
        self.num_actions = num_actions
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.action = nn.Embedding(num_actions + 1, hidden)
        half = freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)  # (freq_dim/2,) built once

    def forward(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """t: (...,) in [0, 1]; actions: (...,) int in [0, num_actions] -> (..., hidden)."""
        angles = (t.float() * 1000.0)[..., None] * self.freqs
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.time_mlp(emb.to(self.time_mlp[0].weight.dtype)) + self.action(actions)

    def flops(self, rows: int) -> int:
        """The time MLP on `rows` (t, a) pairs (the action lookup costs no FLOPs)."""
        return linear_flops(self.time_mlp[0], rows) + linear_flops(self.time_mlp[2], rows)


class RoPE(nn.Module):
    """Rotary position embedding over (frame, row, column).

    The head dimension is split into three even parts (frame gets the remainder); frame positions may be
    fractional. The frequencies and the row/column angles of the token grid are tables built once; a pass only
    multiplies its frame positions in."""

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0):
        super().__init__()
        d_space = (head_dim // 3) // 2 * 2
        self.dims = (head_dim - 2 * d_space, d_space, d_space)
        freqs = [theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d) for d in self.dims]
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        rows, cols = rows.flatten().float()[:, None], cols.flatten().float()[:, None]
        grid_angles = torch.cat([rows * freqs[1], cols * freqs[2]], dim=-1)
        self.register_buffer("frame_freqs", freqs[0], persistent=False)  # (d_frame/2,)
        self.register_buffer("grid_angles", grid_angles, persistent=False)  # (P, (d_row + d_col)/2)

    def forward(self, frame_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_pos: (G,) frame position of each group -> (cos, sin) of its G*P tokens, each (G*P, head_dim/2)."""
        g, (p, d) = frame_pos.shape[0], self.grid_angles.shape
        frame = frame_pos.to(self.frame_freqs.device, torch.float32)[:, None] * self.frame_freqs  # (G, d_frame/2)
        angles = torch.cat([frame[:, None].expand(g, p, -1), self.grid_angles.expand(g, p, d)], dim=-1)
        angles = angles.flatten(0, 1)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: (B, H, N, hd); rotates the pairs (i, i + hd/2) by the position angles."""
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def teacher_forcing_layout(frames, x_t, t, actions, history_t):
    """The sequence [history x_0..x_{F-2} ; noisy x_0..x_{F-1}] (2F-1 groups) that trains a frame-causal stack in
    one pass: noisy frame i attends to history frames < i and to itself, exactly what a KV cache gives at inference.

    frames, x_t: (B, F, C, H, W); t, actions, history_t (flow times of the history frames): (B, F)
    -> seq (B, 2F-1, C, H, W), t (B, 2F-1), actions (B, 2F-1), frame_pos (2F-1,), is_clean (2F-1,). The noisy
    frames are the last F groups."""
    f = x_t.shape[1]
    dev = x_t.device
    seq = torch.cat([frames[:, :-1], x_t], dim=1)
    t_all = torch.cat([history_t[:, :-1], t], dim=1)
    a_all = torch.cat([actions[:, :-1], actions], dim=1)
    frame_pos = torch.cat([torch.arange(f - 1, device=dev), torch.arange(f, device=dev)])
    is_clean = torch.arange(2 * f - 1, device=dev) < f - 1
    return seq, t_all, a_all, frame_pos, is_clean


def group_attention_mask(frame_pos: torch.Tensor, is_clean: torch.Tensor, tokens_per_group: int) -> torch.Tensor | None:
    """Boolean (G*T, G*T) mask, True = may attend, for groups of tokens that are frames.

    Query group g sees key group h iff h == g (bidirectional inside a frame) or h is a clean frame strictly
    earlier than g. Clean frames thus attend frame-causally; a noisy frame sees the clean past and itself,
    and no group ever sees a noisy frame other than itself (teacher forcing). Returns None for one group."""
    if frame_pos.shape[0] == 1:
        return None
    same = torch.eye(frame_pos.shape[0], dtype=torch.bool, device=frame_pos.device)
    past_clean = is_clean[None, :] & (frame_pos[None, :] < frame_pos[:, None])
    group_mask = same | past_clean
    return group_mask.repeat_interleave(tokens_per_group, 0).repeat_interleave(tokens_per_group, 1)


PREFILL_CHUNK = 8  # history frames per pass when a KV cache takes many (prefill)


class KVCache:
    """A ring buffer of the keys/values of `layers` attention blocks: (layers, B, H, (slots + spare) * P, hd), P
    tokens per frame, zero until written.

    Frame f lives in slot f % slots, so nothing moves when old frames leave. A pass (`open`) writes its n new
    frames (history, or the frame being made) into the n slots after the committed frames, overwriting the oldest
    ones, and attends the whole buffer through a mask: it sees the min(frames, slots - n) latest committed frames,
    and its new frames as its own mask says. The frame being made may come in several versions (guidance
    branches), the extra ones in the `spare` slots past the ring. New frames stay scratch until `commit(n)`, so the
    denoising steps of one frame rewrite the same slots; `write_history` writes and commits history frames in
    passes of at most `chunk` frames, which bounds the memory of a long prefill (the masks and activations of one
    pass). Shapes never change and the write position lives on the device (`pos`): a compiled per-frame step is
    one graph for every frame.

    Rows (videos) may start at different frame positions: `start` holds the first position each row has written
    (one for all rows, or (B,) once rows that joined later were concatenated in, `concat`), and a row never sees
    slots from before its start. RoPE is relative, so a row that starts at position p renders as it would from 0."""

    def __init__(self, layers: int, slots: int, tokens_per_frame: int, spare: int = 0, device=None,
                 first_frame: int = 0):
        if slots < 1:
            raise ValueError(f"KV cache needs room for at least 1 frame, got {slots}")
        self.layers, self.slots, self.spare, self.tokens_per_frame = layers, slots, spare, tokens_per_frame
        self.capacity = (slots + spare) * tokens_per_frame
        self.k: torch.Tensor | None = None  # allocated on first write, with the K/V dtype and device
        self.v: torch.Tensor | None = None
        self.chunk = PREFILL_CHUNK
        self.position = first_frame  # the frame position passes write next (host count)
        self.pos = torch.tensor(first_frame, device=device)  # the same, on the device: where passes write
        self.start = self.pos.clone()  # () or (B,): the first frame position of each row
        self._slot = torch.arange(slots + spare, device=device)  # (slots + spare,)
        self._token = torch.arange(tokens_per_frame, device=device)  # (P,)

    def open(self, n: int = 1, branches: int = 1) -> "CachePass":
        """A pass that writes n new frames (positions pos .. pos + n - 1), or one frame in `branches` versions:
        its n or `branches` groups of tokens, in this order."""
        if n > self.slots or (branches > 1 and n != 1) or branches - 1 > self.spare:
            raise ValueError(f"{n} frame(s) in {branches} version(s) do not fit a KV cache of {self.slots} frames "
                             f"and {self.spare} spare slot(s)")
        frame_pos = self.pos + (self._slot[:n] if branches == 1 else self._slot[:1].expand(branches))  # (groups,)
        new = torch.cat([frame_pos[:n] % self.slots, self._slot[self.slots : self.slots + branches - 1]])
        index = (new[:, None] * self.tokens_per_frame + self._token).flatten()  # (groups*P,)
        age = (self.pos - 1 - self._slot) % self.slots  # 0 = the latest committed frame
        held = torch.clamp(self.pos - self.start, max=self.slots - n)[..., None]  # (1,) or (B, 1): frames seen
        kept = (self._slot < self.slots) & (age < held)  # (slots + spare,) or (B, slots + spare)
        return CachePass(self, index, kept.repeat_interleave(self.tokens_per_frame, dim=-1), frame_pos)

    def write_history(self, n: int, run) -> None:
        """n history frames in passes of at most `chunk` frames, each committed before the next: run(part, pass)
        runs the frames of the slice `part` through the model in the CachePass `pass`."""
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            run(slice(lo, hi), self.open(hi - lo))
            self.commit(hi - lo)

    def allocate(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device, static: bool = False):
        """Allocate the buffers; `static`: for a compiled step, which then reads them in place at fixed addresses
        (a CUDA graph replays without copying them)."""
        shape = (self.layers, batch, heads, self.capacity, head_dim)
        try:  # zeros: the masked-out slots still enter attention's weighted sum, with weight 0
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        except (RuntimeError, MemoryError):  # the CPU allocator raises a RuntimeError
            self.k = self.v = None
            size = 2 * math.prod(shape) * dtype.itemsize / 1e9
            raise MemoryError(f"the KV cache for {self.slots} frames needs {size:.1f} GB and does not fit in "
                              "memory: use a smaller window") from None
        for buffer in (self.k, self.v) if static else ():
            torch._dynamo.mark_static_address(buffer)

    def commit(self, n: int) -> None:
        """The last pass's first n new frames become history."""
        self.position += n
        self.pos += n

    def nbytes(self) -> int:
        """Bytes held by the buffers (0 before the first write)."""
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()

    def _check_rows(self) -> None:
        if self.k is None:
            raise ValueError("a KV cache takes or gives rows once it holds frames (after a prefill or a step)")

    def concat(self, other: "KVCache") -> "KVCache":
        """This cache's rows followed by `other`'s, at the same frame position (its rows may have started later)."""
        layout = (self.layers, self.slots, self.tokens_per_frame, self.spare)
        other_layout = (other.layers, other.slots, other.tokens_per_frame, other.spare)
        if layout != other_layout or self.position != other.position:
            raise ValueError(f"cannot concatenate KV caches of (layers, slots, tokens per frame, spare) {layout} at "
                             f"frame {self.position} and {other_layout} at frame {other.position}")
        self._check_rows()
        other._check_rows()
        return self._with_rows(torch.cat([self.k, other.k], dim=1), torch.cat([self.v, other.v], dim=1),
                               torch.cat([self._row_starts(), other._row_starts()]))

    def select(self, rows: torch.Tensor) -> "KVCache":
        """A cache of the given rows (a (R,) index) only."""
        self._check_rows()
        rows = rows.to(self.k.device)
        return self._with_rows(self.k.index_select(1, rows), self.v.index_select(1, rows),
                               self._row_starts().index_select(0, rows))

    def _row_starts(self) -> torch.Tensor:
        """(B,): the first frame position of each row."""
        return self.start.expand(self.k.shape[1])

    def _with_rows(self, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor) -> "KVCache":
        """A cache of this one's layout and frame position holding the buffers k, v with row starts `start`."""
        out = KVCache(self.layers, self.slots, self.tokens_per_frame, self.spare, self.pos.device, self.position)
        out.k, out.v, out.start, out.chunk = k, v, start, self.chunk
        return out


class CachePass(NamedTuple):
    """One pass through a KVCache: where its new tokens go and which committed tokens it sees."""

    cache: KVCache
    index: torch.Tensor  # (N,) positions of the pass's N new tokens in the buffer
    kept: torch.Tensor  # (capacity,) or (B, capacity) bool: committed tokens in each row's window
    frame_pos: torch.Tensor  # (groups,) frame positions of the new groups

    def mask(self, new: torch.Tensor | None) -> torch.Tensor:
        """The (N, N) mask among the new tokens (None: one group, all see all) -> the mask over the buffer,
        (N, capacity), or (1, capacity) for every query alike; (B, 1, N or 1, capacity) when rows started at
        different frames (one mask per row, shared by the heads)."""
        kept = self.kept.unsqueeze(-2)  # (1, capacity) or (B, 1, capacity)
        if new is None:
            mask = kept.index_fill(-1, self.index, True)
        else:
            mask = kept.repeat_interleave(new.shape[0], dim=-2)
            mask = mask.index_copy_(-1, self.index, new.expand(*mask.shape[:-1], new.shape[1]).contiguous())
        return mask if mask.ndim == 2 else mask[:, None]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, N, hd) into the buffer; return the layer's keys/values (B, H, capacity, hd)."""
        cache = self.cache
        if cache.k is None:
            cache.allocate(k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device)
        cache.k[layer].index_copy_(2, self.index, k)
        cache.v[layer].index_copy_(2, self.index, v)
        return cache.k[layer], cache.v[layer]


def _rms_norm(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm with its weight in x's dtype: under bf16 autocast q and k arrive in bf16, and a float32 weight
    would push torch off its fused kernel (with a warning)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


class Attention(nn.Module):
    """Multi-head self-attention with QK RMSNorm and RoPE, through scaled_dot_product_attention."""

    def __init__(self, hidden: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = hidden // head_dim, head_dim
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x, rope, mask=None, cache: CachePass | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, N, D); rope: (cos, sin) of the N query tokens; mask: (N or 1, N_keys) bool or None."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, hd)
        q, k = apply_rope(_rms_norm(self.q_norm, q), rope), apply_rope(_rms_norm(self.k_norm, k), rope)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT): the residual branches start as the identity."""

    def __init__(self, hidden: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, head_dim)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaln = nn.Sequential(nn.SiLU(), zero_linear(nn.Linear(hidden, 6 * hidden)))

    def forward(self, x, cond, rope, mask=None, cache: CachePass | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, G, T, D); cond: (B, G, D) -> (B, G, T, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(cond).unsqueeze(2).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1).flatten(1, 2)
        x = x + gate1 * self.attn(h, rope, mask, cache, layer).view_as(x)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))

    def flops(self, batch: int, tokens: int, keys: int) -> int:
        """One pass over one group of `tokens` query tokens per batch element, each attending `keys` keys:
        adaLN (per group) + QKV + attention (Q K^T and A V: 4 * tokens * keys * D) + output projection + MLP."""
        n, attn = batch * tokens, self.attn
        return (linear_flops(self.adaln[1], batch) + linear_flops(attn.qkv, n) + 4 * n * keys * attn.proj.in_features
                + linear_flops(attn.proj, n) + linear_flops(self.mlp[0], n) + linear_flops(self.mlp[2], n))


def run_blocks(blocks, x, cond, rope, mask=None, cache: CachePass | None = None) -> torch.Tensor:
    """Apply a stack of DiT blocks; x: (B, G, T, D), cond: (B, G, D); with a cache pass, the G groups are its new
    frames, which also attend the cache's history (mask: among the new tokens only)."""
    if cache is not None:
        mask = cache.mask(mask)
    for layer, block in enumerate(blocks):
        x = block(x, cond, rope, mask, cache, layer)
    return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + Linear to patch vectors, zero-initialised (the model starts predicting 0)."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaln = nn.Sequential(nn.SiLU(), zero_linear(nn.Linear(hidden, 2 * hidden)))
        self.linear = zero_linear(nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, G, T, D); cond: (B, G, D) -> (B, G, T, out_dim)."""
        shift, scale = self.adaln(cond).unsqueeze(2).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def flops(self, batch: int, tokens: int) -> int:
        """adaLN (per group) + the projection of `tokens` tokens per batch element to patch vectors."""
        return linear_flops(self.adaln[1], batch) + linear_flops(self.linear, batch * tokens)


def linear_flops(layer: nn.Linear, rows: int) -> int:
    """FLOPs (2 per multiply-add) of `layer` on `rows` vectors; the bias is not counted."""
    return 2 * rows * layer.in_features * layer.out_features


def zero_linear(layer: nn.Linear) -> nn.Linear:
    """Zero a Linear and mark it so `init_linear_layers` leaves it at zero (adaLN-Zero)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    layer.keep_init = True
    return layer


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear (DiT's initialisation), except zero-inits."""
    for m in module.modules():
        if isinstance(m, nn.Linear) and not getattr(m, "keep_init", False):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
