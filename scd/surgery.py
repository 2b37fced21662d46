"""The paper's two subtraction surgeries on a trained Causal DiT (Sec. 4; supp. A.1) and the block runner that
applies them.

A surgery is a state of the model, not an argument of its passes: `operated(model, surgery)` puts a Causal DiT
under one for a rollout, a loss or a whole training run (`TrainConfig(surgery=)`), and every pass inside it, clean
or noisy, training or streaming, runs its blocks through `Surgery.run_blocks` instead of the plain stack:

    with operated(dit, Surgery.skip_after(5, 50, keep_prefix=1, keep_suffix=2)):
        video = generate(dit, context, actions, steps=50)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .models import CausalDiT
from .nn import group_attention_mask
from .sampling import flow_schedule


@dataclass(frozen=True)
class Surgery:
    """Skip-layer schedule: a noisy frame at flow time t <= skip_t runs only its first `keep_prefix` and last
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

    def check(self, model) -> None:
        """Raise unless `model` is a Causal DiT whose block stack this surgery fits."""
        if not isinstance(model, CausalDiT):
            raise ValueError(f"surgeries cut a Causal DiT's blocks; {type(model).__name__} takes none")
        self._check_depth(model.config.depth)

    def _check_depth(self, depth: int) -> None:
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

    def run_blocks(self, blocks, x, cond, rope, mask, frame_pos, t, is_clean, cache, need_output: bool):
        """The block stack under this surgery (the plain stack is nn.run_blocks); x: (B, G, P, D), cond and t:
        per group (B, G, ...), frame_pos and is_clean: (G,), cache: a CachePass or None. need_output=False (a pass
        that only writes the KV cache) stops before the frame-diagonal blocks.

        Skipped middle blocks leave a group's tokens unchanged: not computed when every group skips (streaming),
        selected per group otherwise (training, where the other groups still need the block)."""
        depth = len(blocks)
        self._check_depth(depth)
        causal = mask if cache is None else cache.mask(mask)
        own_frame = group_attention_mask(frame_pos, torch.zeros_like(is_clean), x.shape[2])
        skipped = self.skipped_groups(t, is_clean)
        middle = self.skipped_blocks(depth)
        for layer, block in enumerate(blocks):
            diagonal = layer >= depth - self.diagonal_last
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


@contextmanager
def operated(model, surgery: Surgery | None):
    """Inside the block `model` (a Causal DiT, or its DistributedDataParallel wrapper) runs every pass under
    `surgery`; None leaves it as it is. Hold it for a whole rollout: the cached K/V depend on the surgery."""
    if surgery is None:
        yield model
        return
    net = getattr(model, "module", model)
    surgery.check(net)
    before, net.surgery = net.surgery, surgery
    try:
        yield model
    finally:
        net.surgery = before
