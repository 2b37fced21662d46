"""Flow-matching objective (the paper's Algorithm 1, with the training tricks of its supplementary material).

x_t = (1 - t) x + t eps, t in [0, 1] (t = 1 is pure noise); the sampler integrates the velocity u = eps - x.
What the network itself outputs is its prediction target (`VelocityPrediction`, the paper's, `CleanPrediction`,
x-prediction, or `ChangePrediction`, the change from the last history frame); the model turns it into a velocity,
so the loss and the sampler never depend on that choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch

TIMESTEP_DISTRIBUTIONS = ("logit_normal", "uniform")


class VelocityPrediction:
    """The network outputs the velocity u = eps - x directly (the paper's parameterisation). The flow runs on the
    frames themselves (`to_flow` / `to_frame` are the identity)."""

    needs_anchor = False
    anchor_is_read = False  # change prediction: is x_{i-1} the history frame as read (noisy) or before corruption?

    def to_velocity(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return out

    def to_flow(self, frames: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """The variable the flow generates, from frames (..., C, H, W) and their anchors x_{i-1}."""
        return frames

    def to_frame(self, sample: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """The frame (..., C, H, W) from a generated sample of the flow variable."""
        return sample


@dataclass(frozen=True)
class CleanPrediction(VelocityPrediction):
    """x-prediction ("Back to Basics: Let Denoising Generative Models Denoise", 2025): the network outputs the clean
    frame x_hat, which lies on the data manifold even when a patch has more values than the width (8x8x3 = 192
    here). Since x_t - x = t u, the velocity is u_hat = (x_t - x_hat) / t, with t clamped to >= t_min so that the
    last steps near t = 0 stay finite; the loss stays the velocity MSE (an x-error weighted by 1 / max(t, t_min)^2),
    and an Euler step from t to 0 lands exactly on x_hat."""

    t_min: float = 0.05

    def to_velocity(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """out, x_t: (..., C, H, W); t: (...) -> velocity (..., C, H, W)."""
        t = t.reshape(*t.shape, 1, 1, 1).clamp(min=self.t_min)
        return (x_t - out.to(x_t.dtype)) / t


@dataclass(frozen=True)
class ChangePrediction(CleanPrediction):
    """The flow generates the change d = x_i - x_{i-1} from the anchor, the latest history frame before noise
    augmentation, and the network x-predicts d from the noisy change d_t; the frame is x_{i-1} + d. Static regions
    are d = 0 and a nearly clean d_t is nearly d, so the network's job is easy at both ends of the flow, and the
    zero-initialised head (d_hat = 0) makes an untrained model copy the last frame: training starts from the
    copy-last-frame baseline and learns what moves. Frame 0 of a training clip has no x_{i-1} and carries no loss."""

    needs_anchor = True

    def to_flow(self, frames: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return frames - _required(anchor)

    def to_frame(self, sample: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return _required(anchor).to(sample.dtype) + sample


@dataclass(frozen=True)
class NoisyChangePrediction(ChangePrediction):
    """Change prediction from the last history frame as the model reads it, after history noise augmentation:
    d = x_i - x~_{i-1}, so the network also learns to remove the noise of its anchor. With clean anchors an error
    in a generated frame is copied into every later frame (errors add up); here a corrupted anchor is what
    training shows, and the change cleans it (errors decay). Same as ChangePrediction without history noise."""

    anchor_is_read = True


def _required(anchor: torch.Tensor | None) -> torch.Tensor:
    if anchor is None:
        raise ValueError("change prediction needs the anchor frame x_{i-1}: give at least one context frame")
    return anchor


# What a network outputs and what the flow runs on (ModelConfig.prediction names one).
PREDICTIONS = {"velocity": VelocityPrediction(), "x": CleanPrediction(), "change": ChangePrediction(),
               "change-noisy": NoisyChangePrediction()}


@dataclass(frozen=True)
class FlowConfig:
    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # k in t' = k t / (1 + (k - 1) t); 1 = no shift
    K: int = 1  # noisy draws per context pass (amortized multi-sample decoding, supp. Tab. 2)
    context_noise: float = 0.0  # eta: Gaussian noise on the unit-variance c_i (supp. Tab. 3), SCD only
    action_dropout: float = 0.1  # share of clips trained with the null action, so action guidance is possible
    # noisy_current SCD encoders see the current frame at t ~ U(encoder_t_min, 1) (supp. E.1: the top 20%)
    encoder_t_min: float = 0.8
    # History noise augmentation (GameNGen, DIAMOND): every history frame the model reads is corrupted to its own
    # flow time tau ~ U(0, history_noise), given to the network as that frame's t; at inference history frames
    # are read at the model's fixed ModelConfig.history_noise. 0 = clean history (the paper).
    history_noise: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
            problems.append(f"timesteps must be one of {TIMESTEP_DISTRIBUTIONS}, got {self.timesteps!r}")
        if self.shift <= 0:
            problems.append(f"shift must be > 0, got {self.shift}")
        if self.K < 1:
            problems.append(f"K must be >= 1, got {self.K}")
        if self.context_noise < 0:
            problems.append(f"context_noise must be >= 0, got {self.context_noise}")
        if not 0 <= self.action_dropout <= 1:
            problems.append(f"action_dropout must be in [0, 1], got {self.action_dropout}")
        if not 0 <= self.encoder_t_min <= 1:
            problems.append(f"encoder_t_min must be in [0, 1], got {self.encoder_t_min}")
        if not 0 <= self.history_noise < 1:
            problems.append(f"history_noise must be in [0, 1), got {self.history_noise}")
        if problems:
            raise ValueError("invalid flow config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FlowConfig":
        """The options a checkpoint saved (TrainConfig.flow), without the keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def shift_time(t: torch.Tensor, k: float) -> torch.Tensor:
    """t' = k t / (1 + (k - 1) t): k > 1 moves time towards the noisy end."""
    return k * t / (1 + (k - 1) * t)


def sample_timesteps(shape, cfg: FlowConfig, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training flow times of the given shape, from the logit-normal or the (shifted) uniform distribution."""
    if cfg.timesteps == "logit_normal":
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(shape, generator=generator, device=device))
    else:
        t = torch.rand(shape, generator=generator, device=device)
    return shift_time(t, cfg.shift)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t eps, with t broadcast over the trailing (C, H, W) dims."""
    t = t.reshape(*t.shape, 1, 1, 1)
    return (1 - t) * x + t * noise


def drop_actions(actions: torch.Tensor, p: float, null_action: int) -> torch.Tensor:
    """Replace all actions of a random share p of the clips (B, F) by the null action."""
    if p == 0:
        return actions
    dropped = torch.rand(actions.shape[0], device=actions.device) < p
    return torch.where(dropped[:, None], torch.full_like(actions, null_action), actions)


def corrupt_history(frames: torch.Tensor, max_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """History noise augmentation: frames (B, F, C, H, W) -> (frames at flow times tau, tau (B, F) ~ U(0, max_t))."""
    if max_t == 0:
        return frames, torch.zeros(frames.shape[:2], device=frames.device)
    tau = max_t * torch.rand(frames.shape[:2], device=frames.device)
    return interpolate(frames, torch.randn_like(frames), tau), tau


def anchors(prediction, history: torch.Tensor, read: torch.Tensor) -> torch.Tensor | None:
    """Change prediction's anchor x_{i-1} of every frame of a clip: the history frame before it, as the model read
    it (`read`, after history noise) or before corruption (`history`), as `prediction` says; frame 0's is zeros (it
    has no x_{i-1}, and carries no loss). None for predictions without an anchor. (B, F, C, H, W)."""
    if not prediction.needs_anchor:
        return None
    past = read if prediction.anchor_is_read else history
    return torch.cat([torch.zeros_like(past[:, :1]), past[:, :-1]], dim=1)


def repeat_batch(tree, k: int):
    """Stack k copies of every tensor in `tree` (a tensor or a tuple of them) along the batch dim."""
    return torch.utils._pytree.tree_map(lambda x: x.repeat(k, *[1] * (x.ndim - 1)), tree)


def flow_matching_loss(model, frames: torch.Tensor, actions: torch.Tensor, cfg: FlowConfig,
                       history: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error over every frame of the clips (teacher forcing, Algorithm 1).

    frames: (B, F, C, H, W) targets; actions: (B, F); history: the frames the model reads as the past (default:
    `frames`; rollout training passes the model's own samples). The context (SCD: c_i for every frame, one encoder
    pass; Causal DiT: the history frames) is computed once and reused for K noisy draws. A Causal DiT under a
    surgery (surgery.operated) trains under it."""
    net = getattr(model, "module", model)  # model may be a DistributedDataParallel wrapper: call it, ask the module
    actions = drop_actions(actions, cfg.action_dropout, net.null_action)
    history = frames if history is None else history
    clean_history = history
    history, history_t = corrupt_history(history, cfg.history_noise)
    # the flow variable: the frames, or (change prediction) their change from x_{i-1}, before or after corruption
    x = net.prediction.to_flow(frames, anchors(net.prediction, clean_history, history))  # (B, F, C, H, W)
    # the K draws share one context pass: targets stacked along the batch, (K*B, F, C, H, W)
    x_k = repeat_batch(x, cfg.K)
    t = sample_timesteps(x_k.shape[:2], cfg, device=x.device)
    noise = torch.randn_like(x_k)
    v = model(interpolate(x_k, noise, t), t, history, actions, history_t, x, cfg)
    error = (v.float() - (noise - x_k)).pow(2)  # (K*B, F, C, H, W)
    if net.prediction.needs_anchor:  # frame 0 has no x_{i-1} to change from
        error = error[:, 1:]
    return error.mean()
