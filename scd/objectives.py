"""Training objectives: what one step optimises, given a batch of clips. The trainer calls `objective(model,
frames, actions) -> loss`, where model is the module, its DistributedDataParallel wrapper or the module sharded
by FSDP2 (call it: its forward, WorldModel.forward, is the training path; any other use of the weights, such as
sampling, goes through WorldModel.run, which gathers sharded weights); a new objective (distillation, another
rollout scheme) is one more small class here.

- `FlowMatching`: teacher forcing (Algorithm 1): every frame is denoised from the recorded history.
- `RolloutTraining`: the history is the model's own few-step samples (the paper's rollout training, as in Self
  Forcing), so the model learns to recover from its own errors (exposure bias); the targets stay the recorded
  frames and no gradient flows through the sampling.
- `OneStepHistory`: the history is the model's one-step predictions, each from the recorded frames before it:
  every history frame (and change prediction's anchor) carries one step's error, and the recorded targets stay
  consistent with the recorded past the predictions came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .flow import FlowConfig, flow_matching_loss
from .sampling import generate
from .surgery import Surgery, operated


@dataclass(frozen=True)
class FlowMatching:
    flow: FlowConfig = FlowConfig()
    surgery: Surgery | None = None  # train a Causal DiT under a skip schedule / frame-diagonal blocks

    def __call__(self, model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with operated(model, self.surgery):
            return flow_matching_loss(model, frames, actions, self.flow)


@dataclass(frozen=True)
class RolloutTraining:
    """History = `context` recorded frames followed by the model's own frames, each sampled with `steps` Euler
    steps from the history before it (a streamed rollout driven by the recorded actions; no gradient). The loss
    is the flow-matching loss of the recorded frames given that history.

    Cost per training step: one streamed rollout of F - context frames (SCD: one encoder pass + `steps` decoder
    passes per frame; Causal DiT: `steps` + 1 passes of the whole model per frame) on top of the usual step."""

    flow: FlowConfig = FlowConfig()
    steps: int = 2
    context: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.context < 1:
            raise ValueError(f"rollout training needs steps >= 1 and context >= 1, got {self.steps}, {self.context}")

    def observed(self, frames: torch.Tensor) -> torch.Tensor | None:
        """Recorded frames the sampling reads as history in place of its own (generate's observed=): none here."""
        return None

    def own_frames(self, net, frames: torch.Tensor, actions: torch.Tensor, seed: int) -> torch.Tensor:
        """The model's frames after the context, (B, 1, F - context, C, H, W): a streamed pass from the recorded
        context driven by the recorded actions. net.run: under FSDP2 the sharded weights are gathered."""
        return net.run(generate, net, frames[:, : self.context], actions, observed=self.observed(frames),
                       steps=self.steps, seed=seed, window=frames.shape[1])

    def __call__(self, model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        f = frames.shape[1]
        if f <= self.context:
            raise ValueError(f"rollout training with {self.context} context frames needs clips longer than that, "
                             f"got {f} frames")
        seed = int(torch.randint(2**62, ()))  # from the step's seeded stream: a resumed run draws the same rollouts
        net = getattr(model, "module", model)  # a DDP wrapper: sample with the module (no gradient to sync)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            own = self.own_frames(net, frames, actions, seed)
        net.train(was_training)
        history = torch.cat([frames[:, : self.context], own[:, 0].to(frames.dtype)], dim=1)
        return flow_matching_loss(model, frames, actions, self.flow, history=history)


@dataclass(frozen=True)
class OneStepHistory(RolloutTraining):
    """History = `context` recorded frames, then the model's one-step predictions: frame j sampled with `steps`
    Euler steps from the recorded frames before it (teacher-forced sampling, `generate(observed=)`), not from the
    model's earlier frames. A rollout's history compounds its errors and drifts away from the recorded future the
    loss asks for; here each history frame is off by one step's error, and the model learns to render the recorded
    frame i from a history, and an anchor x_{i-1}, that are slightly wrong in the way its own frames are. Costs
    what RolloutTraining does (one streamed pass over the clip)."""

    def observed(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, self.context :]
