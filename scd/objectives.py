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
- `AdversarialRollout`: teacher forcing plus a critic's verdict on frames rendered from the model's own rollout
  history (gradient through the few sampling steps of each frame, not through the history): a target that does
  not depend on the recorded future, so the model can learn to keep its rollouts sharp without averaging futures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .critic import FrameCritic
from .flow import FlowConfig, anchors, flow_matching_loss, interpolate
from .sampling import euler_sample, flow_schedule, generate
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

    def history(self, net, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The recorded context, then the model's own frames (B, F, C, H, W), sampled without gradient by the
        module `net` (not a DDP wrapper: no gradient to sync)."""
        f = frames.shape[1]
        if f <= self.context:
            raise ValueError(f"rollout training with {self.context} context frames needs clips longer than that, "
                             f"got {f} frames")
        seed = int(torch.randint(2**62, ()))  # from the step's seeded stream: a resumed run draws the same rollouts
        was_training = net.training
        net.eval()
        with torch.no_grad():
            own = self.own_frames(net, frames, actions, seed)
        net.train(was_training)
        return torch.cat([frames[:, : self.context], own[:, 0].to(frames.dtype)], dim=1)

    def __call__(self, model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        history = self.history(getattr(model, "module", model), frames, actions)
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


@dataclass(frozen=True)
class AdversarialRollout(RolloutTraining):
    """Loss = flow matching (teacher forcing) + `weight` x the hinge generator loss -D(x^_i) of frames x^_i >=
    `context` rendered from the model's own rollout history: the same `steps`-step sampler as inference (the model's
    temperature and shift), with gradient through those steps and the frame's context pass, none through the
    history. D reads each frame beside the clip's last recorded context frame (critic.FrameCritic). Before that,
    every call takes one step of the critic (its own AdamW, lr `critic_lr`) on the hinge loss
    relu(1 - D(recorded frame)) + relu(1 + D(rendered frame)) over the same clip positions.

    The critic and its optimiser are training state (`state_dict`, saved with the trainer's); it runs in one
    process (each rank would train its own critic). Cost per step: the rollout of RolloutTraining, one more context
    pass and `steps` decoder passes with gradient, and the critic's two passes."""

    critic: FrameCritic | None = None
    weight: float = 0.03
    critic_lr: float = 1e-4
    critic_optimizer: torch.optim.Optimizer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.critic is None:
            raise ValueError("adversarial training needs a critic: FrameCritic(model.config.frame_shape)")
        if not self.weight > 0 or not self.critic_lr > 0:
            raise ValueError(f"adversarial weight and critic_lr must be > 0, got {self.weight}, {self.critic_lr}")
        optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.critic_lr, betas=(0.0, 0.99))
        object.__setattr__(self, "critic_optimizer", optimizer)

    # -- training state, saved beside the model's --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def to(self, device) -> "AdversarialRollout":
        self.critic.to(device)
        return self

    # -- the game ----------------------------------------------------------------------------------------------
    def rendered_frames(self, net, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every frame i of the clip rendered from history frames < i, as inference renders it (history read at
        the model's history noise, the sampler's starting noise at its temperature): history (B, F, C, H, W),
        actions (B, F) -> frames (B, F, C, H, W), differentiable through the sampling, not the history."""
        cfg = net.config
        if cfg.arch == "scd" and cfg.encoder_input != "previous_frame":
            raise ValueError(f"adversarial training renders frames as a rollout does; an SCD encoder reading the "
                             f"current frame ({cfg.encoder_input!r}) is not supported")
        history = history.detach()
        history_t = torch.full(history.shape[:2], cfg.history_noise, device=history.device)
        read = interpolate(history, torch.randn_like(history), history_t) if cfg.history_noise else history
        ctx = net.training_context(read, actions, history_t)
        b, f = history.shape[:2]
        noise = cfg.sample_temperature * torch.randn_like(history)
        schedule = flow_schedule(self.steps, cfg.sample_shift, device=history.device)
        sample = euler_sample(lambda x, t: net.velocity(x, t[:, None].expand(b, f), ctx, actions), noise, schedule)
        frames = net.prediction.to_frame(sample, anchors(net.prediction, history, read))  # frame 0's: never scored
        return frames if cfg.frame_range is None else frames.clamp(*cfg.frame_range)

    def critic_step(self, real: torch.Tensor, fake: torch.Tensor, context: torch.Tensor) -> None:
        """One hinge-loss step of the critic on recorded and rendered frames (..., C, H, W), each read beside its
        clip's last context frame (like them), in float32."""
        with torch.autocast(real.device.type, enabled=False):
            context = context.detach()
            loss = (torch.relu(1 - self.critic(real.detach(), context)).mean()
                    + torch.relu(1 + self.critic(fake.detach(), context)).mean())
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_optimizer.step()
        self.critic.zero_grad(set_to_none=True)

    def __call__(self, model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        net = getattr(model, "module", model)
        if net is not model:
            raise ValueError("adversarial training runs in one process (each rank would train its own critic)")
        history = self.history(net, frames, actions)
        fake = self.rendered_frames(net, history, actions)[:, self.context :]  # (B, F - context, C, H, W)
        context = frames[:, self.context - 1 : self.context].expand_as(fake)  # the last recorded frame, per frame
        self.critic_step(frames[:, self.context :], fake, context)
        with torch.autocast(frames.device.type, enabled=False):
            generator = -self.critic(fake, context).mean()
        return flow_matching_loss(model, frames, actions, self.flow) + self.weight * generator
