"""Probing a model during a real rollout, through hooks (the paper's Sec. 4 and supp. A).

    scd probe --checkpoint RUN --data HELDOUT --out DIR [--clips 4 --context 4 --frames 8 --steps 20]

What it measures, per block of the denoising stack (a Causal DiT's blocks, or an SCD's decoder blocks):
- step-to-step feature similarity: S x S matrices of the cosine similarity and of the mean squared distance
  between the block's output on the current noisy frame's tokens at denoising steps s and s', averaged over
  the generated frames and samples (supp. Fig. 1), and their mean over the off-diagonal pairs against depth;
- PCA of the block's features across the steps of one frame: three principal components as RGB on the token
  grid, one tile per step (Fig. 2b);
- cross-frame attention mass: the share of attention that the current frame's queries give to keys of other
  frames (the KV cache; for an SCD decoder, the context c_i), averaged over heads, queries and steps;
- leave-one-out importance (main text, E.1): the change of the flow-matching loss on held-out clips (fixed seed)
  and of the rollout PSNR/SSIM/LPIPS against the ground truth (fixed seed) when one block is replaced by identity.

Nothing here changes a forward pass: features are read by forward hooks, the attention mass is recomputed by a
pre-hook on the Attention module from the same inputs (the fast path never materialises attention), and a
skipped block is a forward hook that returns the block's input. The plot_* functions draw the figures that
`scd probe` writes beside its probe.json.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.store import ClipDataset
from .flow import FlowConfig, flow_matching_loss
from .nn import Attention, apply_rope
from .plots import pyplot, save_figure
from .quality import rollout_quality
from .sampling import generate


# -- attention mass ------------------------------------------------------------------------------------------
def context_attention_mass(attn: Attention, x, rope, mask=None, cache=None, layer: int = 0, *, tokens: int):
    """Share of attention that the current frame's queries (the last `tokens` tokens of x (B, N, D)) give to all
    other keys: the KV cache's committed past frames and any earlier tokens of x (an SCD decoder's c_i).

    Recomputes q and k exactly as Attention.forward does from the same inputs (with a CachePass, the keys are the
    cache's buffer with the pass's new keys written in, under the pass's mask) and materialises
    softmax(q k^T / sqrt(hd)) only here. Returns (B,) averaged over heads and queries, and the share of those keys
    among the keys the queries see (the mass uniform attention would give)."""
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).view(b, n, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
    q, k = apply_rope(attn.q_norm(q), rope), apply_rope(attn.k_norm(k), rope)
    own = torch.arange(n - tokens, n, device=x.device)  # the current frame's keys
    if cache is not None:
        buffer = cache.cache.k
        keys = k.new_zeros(b, attn.heads, cache.cache.capacity, attn.head_dim) if buffer is None else buffer[layer]
        k, own = keys.to(k.dtype).index_copy(2, cache.index, k), cache.index[-tokens:]
    scores = (q[:, :, -tokens:].float() @ k.float().transpose(-1, -2)) * attn.head_dim**-0.5  # (B, H, P, keys)
    seen = torch.ones(1, k.shape[2], dtype=torch.bool, device=x.device) if mask is None else mask[-tokens:]
    probs = scores.masked_fill(~seen, float("-inf")).softmax(dim=-1)
    others = seen.index_fill(1, own, False)  # (P or 1, keys)
    return (probs * others).sum(-1).mean(dim=(1, 2)), (others[-1].sum() / seen[-1].sum()).item()


# -- the rollout probe ---------------------------------------------------------------------------------------
class RolloutProbe:
    """Reads a rollout step by step through hooks; pass `probe.callback` to Streamer / rollout / generate.

        with RolloutProbe(model) as probe:
            generate(model, context, actions, steps=S, callback=probe.callback)
        result = probe.result()

    A pre-hook on `cond` marks the start of every pass and a hook on `head` the end of every velocity pass, so the
    features and attention masses filed under (frame, step) come from that step's velocity pass only (never from
    a Causal DiT's clean caching pass). Blocks a surgery skips at a step have no features there (NaN). Guided
    rollouts (two velocity passes per step) are not supported. Samples are averaged; `pca_frame` (index among
    the generated frames) of sample 0 is kept for the PCA images."""

    def __init__(self, model, pca_frame: int = 0, attention: bool = True):
        self.model = model
        self.points = model.denoising_stack()
        self.tokens = model.config.tokens_per_frame  # the current frame's: the last of every block's output
        self.pca_frame = pca_frame
        self.attention = attention and self.points.attends_context
        self._handles: list = []
        self._pending: dict = {}  # what the current pass recorded
        self._sealed: dict = {}  # what the last velocity pass recorded
        self._passes = 0  # velocity passes since the last step
        self._frame: int | None = None
        self._steps: dict[int, dict] = {}  # step -> records of the current frame
        self.frames_seen = 0
        self.samples = 0  # rollouts (batch x samples) averaged per frame
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}
        self.pca_features: dict[int, torch.Tensor] | None = None  # block -> (S, P, D)
        self.mass_per_step: list[list[float]] = []  # per frame: (S, L) lists

    # hooks
    def __enter__(self) -> "RolloutProbe":
        pts = self.points
        self._handles.append(pts.cond.register_forward_pre_hook(lambda m, args: self._pending.clear()))
        self._handles.append(pts.head.register_forward_hook(self._seal))
        for i, block in enumerate(pts.blocks):
            self._handles.append(block.register_forward_hook(self._feature_hook(i)))
            if self.attention:
                self._handles.append(block.attn.register_forward_pre_hook(self._attention_hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._finish_frame()

    def _seal(self, module, args, output) -> None:
        self._sealed = dict(self._pending)
        self._passes += 1

    def _feature_hook(self, i: int):
        def hook(module, args, output):
            self._pending[("feature", i)] = output[:, -1, -self.tokens :].detach().float().clone()
        return hook

    def _attention_hook(self, i: int):
        signature = inspect.signature(Attention.forward)

        def hook(module, args, kwargs):
            bound = signature.bind(module, *args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            with torch.no_grad():
                mass, uniform = context_attention_mass(module, a["x"], a["rope"], a["mask"], a["cache"], a["layer"],
                                                       tokens=self.tokens)
            self._pending[("mass", i)] = (mass.float().cpu(), uniform)
        return hook

    def callback(self, info: dict) -> None:
        """Streamer callback: files the last velocity pass under (info['frame'], info['step'])."""
        if info.get("guided") or self._passes != 1:
            raise ValueError(f"RolloutProbe needs one velocity pass of one branch per denoising step, saw "
                             f"{self._passes} pass(es){' with guidance branches' * bool(info.get('guided'))}: probe "
                             "without guidance")
        self._passes = 0
        if info["frame"] != self._frame:
            self._finish_frame()
            self._frame = info["frame"]
        self._steps[info["step"]] = self._sealed
        self._sealed = {}

    # accumulation
    def _add(self, name: str, value: torch.Tensor, count: torch.Tensor) -> None:
        if name not in self._sums:
            self._sums[name] = torch.zeros_like(value)
            self._counts[name] = torch.zeros_like(count)
        self._sums[name] += value
        self._counts[name] += count

    def _finish_frame(self) -> None:
        if not self._steps:
            return
        steps = max(self._steps) + 1
        depth = len(self.points.blocks)
        cos = torch.full((depth, steps, steps), math.nan, dtype=torch.float64)
        mse = cos.clone()
        mass = torch.full((steps, depth), math.nan, dtype=torch.float64)
        uniform = []
        n = 0
        for i in range(depth):
            feats = [self._steps.get(s, {}).get(("feature", i)) for s in range(steps)]
            present = next((f for f in feats if f is not None), None)
            if present is not None:
                n = present.shape[0]
                f = torch.stack([x if x is not None else torch.full_like(present, math.nan) for x in feats])
                c, m = step_similarity(f.flatten(2).double())  # (B, S, S) each
                cos[i], mse[i] = c.mean(0), m.mean(0)
                if self.frames_seen == self.pca_frame:
                    if self.pca_features is None:
                        self.pca_features = {}
                    self.pca_features[i] = f[:, 0]  # (S, P, D) of sample 0
            for s in range(steps):
                record = self._steps.get(s, {}).get(("mass", i))
                if record is not None:
                    mass[s, i] = float(record[0].mean())
                    uniform.append(record[1])
        self.samples = n
        weight = torch.tensor(float(n), dtype=torch.float64)
        self._add("cos", cos * n, weight)
        self._add("mse", mse * n, weight)
        self.mass_per_step.append(mass.tolist())
        if uniform:
            self._add("uniform", torch.tensor(sum(uniform) / len(uniform), dtype=torch.float64), torch.tensor(1.0))
        self.frames_seen += 1
        self._steps = {}

    def result(self) -> dict:
        """Similarity matrices (L, S, S), their off-diagonal means (L,), attention mass (L,) and per step (S, L)."""
        if "cos" not in self._sums:
            raise ValueError("the probe saw no denoising step: pass probe.callback to the rollout inside `with`")
        cos = self._sums["cos"] / self._counts["cos"]
        mse = self._sums["mse"] / self._counts["mse"]
        steps = cos.shape[-1]
        off = ~torch.eye(steps, dtype=torch.bool)
        out = {
            "frames": self.frames_seen,
            "rollouts": self.samples,
            "steps": steps,
            "cosine": cos.tolist(),
            "mse": mse.tolist(),
            "mean_offdiag_cosine": [float(c[off].nanmean()) if steps > 1 else math.nan for c in cos],
            "mean_offdiag_mse": [float(m[off].nanmean()) if steps > 1 else math.nan for m in mse],
            "attention_mass": None,
        }
        if self.attention:
            per_step = torch.tensor(self.mass_per_step, dtype=torch.float64).nanmean(0)  # (S, L) over frames
            out["attention_mass"] = per_step.nanmean(0).tolist()
            out["attention_mass_per_step"] = per_step.tolist()
            out["uniform_share"] = float(self._sums["uniform"] / self._counts["uniform"])
        return out


def step_similarity(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f: (S, B, M) features of S steps -> cosine similarity and mean squared distance, each (B, S, S)."""
    f = f.transpose(0, 1)  # (B, S, M)
    gram = f @ f.transpose(1, 2)
    sq = gram.diagonal(dim1=1, dim2=2)  # (B, S) squared norms
    norm = sq.clamp_min(0).sqrt()
    cos = gram / (norm[:, :, None] * norm[:, None, :]).clamp_min(1e-30)
    mse = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0) / f.shape[-1]
    return cos, mse


def pca_images(features: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """features (S, P, D) of one block across S steps -> (S, h, w, 3) in [0, 1]: the first three principal
    components of all S*P tokens (one basis for every step, so colours compare across steps), each scaled by
    its 1st-99th percentile range. Steps without features (NaN) come out grey."""
    s, p, d = features.shape
    valid = ~torch.isnan(features).any(dim=(1, 2))
    x = features[valid].reshape(-1, d).double()
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ vh[:3].T).reshape(-1, p, 3)
    lo = torch.quantile(proj.reshape(-1, 3), 0.01, dim=0)
    hi = torch.quantile(proj.reshape(-1, 3), 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    out = torch.full((s, p, 3), 0.5, dtype=torch.float64)
    out[valid] = rgb
    return out.reshape(s, *grid, 3).numpy()


# -- leave-one-out -------------------------------------------------------------------------------------------
@contextmanager
def skipping(block: nn.Module):
    """Inside the context `block` returns its input unchanged (a forward hook: the block is replaced by identity)."""
    handle = block.register_forward_hook(lambda module, args, output: args[0])
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def fixed_loss(model, frames, actions, flow: FlowConfig, seed: int = 0, draws: int = 1, batch: int = 16) -> float:
    """Flow-matching loss on clips (N, F, C, H, W) with fixed timesteps and noise: `draws` seeded draws
    (seed, seed+1, ...), each over all clips in batches of `batch`, averaged."""
    losses = []
    for d in range(draws):
        torch.manual_seed(seed + d)
        for i in range(0, frames.shape[0], batch):
            f, a = frames[i : i + batch].to(model.device), actions[i : i + batch].to(model.device)
            losses.append(float(flow_matching_loss(model, f, a, flow)) * f.shape[0])
    return sum(losses) / (draws * frames.shape[0])


def leave_one_out(model, loss_clips, rollout_clips, context: int, steps: int = 20, shift: float = 1.0,
                  seed: int = 0, flow: FlowConfig | None = None, loss_draws: int = 2, progress=None) -> dict:
    """For every block (model.labelled_blocks), the change of the fixed-seed loss and of the rollout quality when that block
    is skipped. loss_clips, rollout_clips: (frames (N, F, C, H, W), actions (N, F)). Returns per-block lists."""
    flow = flow or FlowConfig(action_dropout=0.0)
    blocks = model.labelled_blocks()

    def measure():
        loss = fixed_loss(model, *loss_clips, flow, seed, loss_draws)
        quality = rollout_quality(model, *rollout_clips, context, steps, shift, seed)
        return {"loss": loss, **{k: quality[k] for k in ("psnr", "ssim", "lpips")}}

    base = measure()
    skipped = []
    for label, block in blocks:
        with skipping(block):
            skipped.append(measure())
        if progress is not None:
            progress(label, skipped[-1])
    out = {"blocks": [label for label, _ in blocks], "base": base}
    for key in base:
        out[key] = [r[key] for r in skipped]
        out[f"delta_{key}"] = [r[key] - base[key] for r in skipped]
    return out


# -- figures -------------------------------------------------------------------------------------------------
def _shown_blocks(depth: int, most: int = 8) -> list[int]:
    """All blocks, or `most` of them evenly spaced (first and last included)."""
    if depth <= most:
        return list(range(depth))
    return sorted({round(i * (depth - 1) / (most - 1)) for i in range(most)})


def plot_similarity(sim: dict, labels: list[str], path: Path, title: str) -> None:
    """Heatmaps (cosine, mean squared distance) per block, each with its colour bar."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    shown = _shown_blocks(len(labels))
    fig, axes = plt.subplots(2, len(shown), figsize=(2.9 * len(shown), 5.6), squeeze=False)
    for col, i in enumerate(shown):
        for row, (key, name, cmap) in enumerate([("cosine", "cosine similarity", "viridis"),
                                                 ("mse", "mean squared distance", "magma_r")]):
            ax = axes[row, col]
            im = ax.imshow(np.array(sim[key][i]), cmap=cmap, origin="upper")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"block {labels[i]}: {name}" if col == 0 else f"block {labels[i]}", fontsize=9)
            ax.set_xlabel("denoising step s'", fontsize=8)
            ax.set_ylabel("denoising step s", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}: step-to-step similarity of block outputs (current frame's tokens), "
                 f"mean over {sim['frames']} frames x {sim['rollouts']} rollouts")
    fig.subplots_adjust(left=0.05, right=0.97, top=0.86, bottom=0.09, wspace=0.45, hspace=0.45)
    save_figure(fig, path, dpi=110)


def plot_depth_curves(sim: dict, labels: list[str], path: Path, title: str) -> None:
    """Per-block summaries against depth: mean off-diagonal cosine, MSE, and the cross-frame attention mass."""
    plt = pyplot()
    panels = 3 if sim.get("attention_mass") is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.6))
    x = np.arange(len(labels))
    axes[0].plot(x, sim["mean_offdiag_cosine"], "o-")
    axes[0].set(title="step-to-step cosine similarity", ylabel="mean over step pairs s != s'")
    axes[1].plot(x, sim["mean_offdiag_mse"], "o-", color="tab:red")
    axes[1].set(title="step-to-step mean squared distance", ylabel="mean over step pairs s != s'")
    if panels == 3:
        axes[2].plot(x, sim["attention_mass"], "o-", color="tab:green", label="measured")
        axes[2].axhline(sim["uniform_share"], ls="--", color="gray", label="uniform attention")
        axes[2].set(title="attention mass on other frames", ylabel="share of the current frame's attention",
                    ylim=(0, 1))
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, labels)
        ax.set_xlabel("block (depth)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.82, bottom=0.15, wspace=0.3)
    save_figure(fig, path, dpi=110)


def plot_pca(features: dict[int, torch.Tensor], labels: list[str], grid, path: Path, title: str,
             frame: np.ndarray | None = None) -> None:
    """One row per block: the PCA image of its features at every denoising step side by side (+ the generated
    frame, resized to the token grid's tile size)."""
    plt = pyplot()
    shown = [i for i in _shown_blocks(len(labels)) if i in features]
    steps = next(iter(features.values())).shape[0]
    scale = max(1, 32 // max(grid))  # tiles of ~32 pixels
    gap = np.ones((grid[0] * scale, 2, 3))

    def row_image(tiles: np.ndarray) -> np.ndarray:
        big = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (S, h, w, 3)
        return np.concatenate([x for tile in big for x in (tile, gap)][:-1], axis=1)

    fig, axes = plt.subplots(len(shown), 1 + (frame is not None), squeeze=False,
                             figsize=(0.55 * steps + 2.2, 0.62 * len(shown) + 0.9),
                             gridspec_kw={"width_ratios": [steps, 1.2][: 1 + (frame is not None)]})
    width = grid[1] * scale + 2
    for row, i in enumerate(shown):
        ax = axes[row, 0]
        ax.imshow(row_image(pca_images(features[i], grid)), interpolation="nearest")
        ax.set_yticks([])
        ax.set_ylabel(f"block {labels[i]}", fontsize=8, rotation=0, ha="right", va="center")
        ax.set_xticks(np.arange(steps) * width + width / 2 - 1, [str(s) for s in range(steps)], fontsize=6)
        if row == len(shown) - 1:
            ax.set_xlabel("denoising step", fontsize=8)
        if frame is not None:
            axes[row, 1].imshow(frame)
            axes[row, 1].axis("off")
            if row == 0:
                axes[row, 1].set_title("result", fontsize=7)
    fig.suptitle(f"{title}: PCA of block features across steps (3 components as RGB, one basis per block)",
                 fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.1, hspace=0.35, wspace=0.05)
    save_figure(fig, path, dpi=110)


def plot_leave_one_out(loo: dict, path: Path, title: str) -> None:
    """Bars per block: change of the loss, of PSNR and of LPIPS when the block is skipped."""
    plt = pyplot()
    labels = loo["blocks"]
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, name, color in [(axes[0], "delta_loss", "loss change (higher = more important)", "tab:blue"),
                                 (axes[1], "delta_psnr", "PSNR change, dB (lower = more important)", "tab:red"),
                                 (axes[2], "delta_lpips", "LPIPS change (higher = more important)", "tab:purple")]:
        ax.bar(x, loo[key], color=color)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(title=name, xlabel="skipped block")
        ax.grid(alpha=0.3, axis="y")
    base = loo["base"]
    fig.suptitle(f"{title}: leave-one-out (base loss {base['loss']:.4f}, PSNR {base['psnr']:.2f}, "
                 f"LPIPS {base['lpips']:.4f})")
    fig.subplots_adjust(left=0.06, right=0.98, top=0.82, bottom=0.15, wspace=0.3)
    save_figure(fig, path, dpi=110)


# -- the whole probe -----------------------------------------------------------------------------------------
@torch.no_grad()
def probe_rollout(model, frames, actions, context: int, steps: int = 20, shift: float = 1.0, seed: int = 0,
                  pca_frame: int = 0):
    """One rollout with a RolloutProbe attached: (probe result dict, PCA features, generated video (N, H, ...) in the
    model's space). frames: uint8 (N, F, H, W, 3) recorded frames (the model's codec encodes them) or frames in the
    model's space."""
    device = model.device
    with RolloutProbe(model, pca_frame=pca_frame) as probe:
        video = generate(model, frames[:, :context].to(device), actions.to(device), steps=steps, shift=shift,
                         seed=seed, callback=probe.callback)[:, 0]
    return probe.result(), probe.pca_features, video


def training_flow(info: dict) -> FlowConfig:
    """The training timesteps (and encoder noise) of a checkpoint's info, without action dropout or context noise,
    one draw per clip."""
    saved = FlowConfig.from_dict(info.get("train", {}).get("flow", {}))
    return dataclasses.replace(saved, action_dropout=0.0, context_noise=0.0, K=1)


def loss_clips(data, count: int, clip_len: int, episodes=None, codec=None):
    """`count` non-overlapping clips spread evenly over the data set: (frames (N, F, C, H, W), actions (N, F)), the
    frames in `codec`'s space (a model's codec; default pixels), encoded clip by clip."""
    clips = ClipDataset(data, clip_len, episodes, stride=clip_len, codec=codec, cache_latents=False)
    if len(clips) < count:
        raise ValueError(f"{data} has {len(clips)} non-overlapping clips of {clip_len} frames; {count} were asked for")
    index = np.linspace(0, len(clips) - 1, count).round().astype(int)
    frames, actions = zip(*(clips[int(i)] for i in index))
    return torch.stack(frames), torch.stack(actions)
