"""Building blocks shared by both architectures: patchify, conditioning, 3-axis RoPE, the teacher-forcing layout and
mask, the KV cache, the DiT block and a stack runner, and what each costs in FLOPs.

Token layout inside the transformer: (B, G, T, D) where G = attention groups (usually frames), T = tokens per group.
Conditioning is per group: (B, G, D). Attention flattens groups to a sequence of G*T tokens.
"""

from __future__ import annotations

import math

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

    def forward(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """t: (...,) in [0, 1]; actions: (...,) int in [0, num_actions] -> (..., hidden)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = (t.float() * 1000.0)[..., None] * freqs
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.time_mlp(emb.to(self.time_mlp[0].weight.dtype)) + self.action(actions)

    def flops(self, rows: int) -> int:
        """The time MLP on `rows` (t, a) pairs (the action lookup costs no FLOPs)."""
        return linear_flops(self.time_mlp[0], rows) + linear_flops(self.time_mlp[2], rows)


class RoPE(nn.Module):
    """Rotary position embedding over (frame, row, column).

    The head dimension is split into three even parts (frame gets the remainder); positions may be fractional."""

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0):
        super().__init__()
        d_space = (head_dim // 3) // 2 * 2
        self.dims = (head_dim - 2 * d_space, d_space, d_space)
        self.theta = theta
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        self.register_buffer("grid_rc", torch.stack([rows.flatten(), cols.flatten()], -1).float(), persistent=False)

    def positions(self, frame_pos: torch.Tensor) -> torch.Tensor:
        """frame_pos: (G,) frame index of each group -> (G*P, 3) token positions (frame, row, col)."""
        g, p = frame_pos.shape[0], self.grid_rc.shape[0]
        frame = frame_pos.float().to(self.grid_rc.device).repeat_interleave(p)[:, None]
        return torch.cat([frame, self.grid_rc.repeat(g, 1)], dim=-1)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: (N, 3) -> (cos, sin), each (N, head_dim/2)."""
        angles = []
        for axis, d in enumerate(self.dims):
            freqs = self.theta ** (-torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)
            angles.append(pos[:, axis, None] * freqs)
        angles = torch.cat(angles, dim=-1)
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


class KVCache:
    """Preallocated keys/values of `layers` attention blocks: (layers, B, H, capacity, hd).

    `length` tokens are committed (clean frames). A forward pass writes its new K/V just past `length` and
    attends to everything up to there; only `commit(n)` makes them permanent, so denoising steps can use the
    same buffer as scratch space. When full, the oldest whole frames are evicted (a sliding window)."""

    def __init__(self, layers: int, capacity_frames: int, tokens_per_frame: int):
        if capacity_frames < 1:
            raise ValueError(f"KV cache needs room for at least 1 frame, got {capacity_frames}")
        self.layers = layers
        self.tokens_per_frame = tokens_per_frame
        self.capacity = capacity_frames * tokens_per_frame
        self.k: torch.Tensor | None = None  # allocated on first write, with the K/V dtype and device
        self.v: torch.Tensor | None = None
        self.length = 0
        self.evicted_frames = 0

    def reserve(self, n_tokens: int) -> None:
        """Make room for n_tokens past `length`, evicting the oldest frames if needed."""
        if n_tokens > self.capacity:
            raise ValueError(f"{n_tokens} tokens do not fit a KV cache of {self.capacity} tokens")
        overflow = self.length + n_tokens - self.capacity
        if overflow > 0 and self.k is not None:
            drop = -(-overflow // self.tokens_per_frame) * self.tokens_per_frame
            keep = self.length - drop
            self.k[:, :, :, :keep] = self.k[:, :, :, drop : self.length].clone()
            self.v[:, :, :, :keep] = self.v[:, :, :, drop : self.length].clone()
            self.length = keep
            self.evicted_frames += drop // self.tokens_per_frame

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, n, hd) past the committed tokens; return all keys/values (B, H, length+n, hd)."""
        if self.k is None:
            shape = (self.layers, k.shape[0], k.shape[1], self.capacity, k.shape[3])
            try:
                self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
                self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
            except (RuntimeError, MemoryError):  # the CPU allocator raises a RuntimeError
                self.k = self.v = None
                size = 2 * math.prod(shape) * k.element_size() / 1e9
                raise MemoryError(f"the KV cache for {self.capacity // self.tokens_per_frame} frames needs {size:.1f} GB "
                                  "and does not fit in memory: use a smaller window") from None
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens

    def nbytes(self) -> int:
        """Bytes held by the preallocated buffers (0 before the first write)."""
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


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

    def forward(self, x, rope, mask=None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, N, D); rope: (cos, sin) of the N query tokens; mask: (N, N_keys) bool or None."""
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

    def forward(self, x, cond, rope, mask=None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
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


def with_cached_prefix(mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor | None:
    """Extend a (N, N) mask with all-visible columns for the committed cache tokens (all clean, all past)."""
    if mask is None or cache is None or cache.length == 0:
        return mask
    visible = torch.ones(mask.shape[0], cache.length, dtype=torch.bool, device=mask.device)
    return torch.cat([visible, mask], dim=1)


def run_blocks(blocks, x, cond, rope, mask=None, cache: KVCache | None = None) -> torch.Tensor:
    """Apply a stack of DiT blocks; x: (B, G, T, D), cond: (B, G, D)."""
    mask = with_cached_prefix(mask, cache)
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
