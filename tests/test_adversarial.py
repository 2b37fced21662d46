"""Adversarial rollout training (scd.objectives.AdversarialRollout, scd.critic.FrameCritic)."""

import pytest
import torch

from scd.checkpoint import load_model
from scd.critic import FrameCritic
from scd.flow import FlowConfig
from scd.objectives import AdversarialRollout
from scd.sampling import generate
from scd.train import TrainConfig, train

from test_models import FRAME, clip, tiny
from test_train import MovingSquares, tiny_config


def objective(**kw) -> AdversarialRollout:
    torch.manual_seed(0)
    return AdversarialRollout(FlowConfig(), steps=2, context=2, critic=FrameCritic(FRAME, width=8), **kw)


@pytest.mark.parametrize("arch, changes", [("scd", dict(prediction="change")), ("causal_dit", {}),
                                           ("causal_dit", dict(prediction="change"))])
def test_rendered_frames_are_the_frames_a_rollout_renders_from_that_history(arch, changes):
    """Frame i rendered with gradient equals the teacher-forced rollout's frame i from the same history (temperature
    0 takes the noise out, the model's shift and steps as at inference); the gradient reaches the weights, never
    the history."""
    model = tiny(arch, sample_temperature=0.0, sample_shift=0.5, **changes)
    frames, actions = clip(b=2, f=6)
    history = frames.clone().requires_grad_(True)
    rendered = objective().rendered_frames(model, history, actions)  # (B, F, C, H, W)
    with torch.no_grad():
        forced = generate(model, frames[:, :2], actions, observed=frames[:, 2:], steps=2)[:, 0]  # (B, 4, ...)
    torch.testing.assert_close(rendered[:, 2:].detach(), forced, atol=2e-5, rtol=1e-4)
    rendered[:, 2:].square().sum().backward()
    assert history.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_critic_learns_which_frames_continue_their_context():
    """Recorded continuations are their context frame plus a little change, rendered ones are another world of the
    same statistics: only reading the context tells them apart."""
    adversarial = objective(critic_lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def batch():  # fresh draws every time: the critic cannot learn the samples themselves
        context = torch.sign(torch.randn(8, *FRAME, generator=g))
        real = context + 0.1 * torch.randn(8, *FRAME, generator=g)
        fake = torch.sign(torch.randn(8, *FRAME, generator=g)) + 0.1 * torch.randn(8, *FRAME, generator=g)
        return real, fake, context

    for _ in range(80):
        adversarial.critic_step(*batch())
    real, fake, context = batch()
    with torch.no_grad():
        assert adversarial.critic(real, context).min() > adversarial.critic(fake, context).max()
    assert all(p.grad is None for p in adversarial.critic.parameters())  # nothing left for the model's step


def test_the_generator_term_moves_rendered_frames_towards_what_the_critic_calls_real(monkeypatch):
    """With the flow-matching term taken out and the critic frozen after its step, one SGD step of the model on
    the objective's loss raises the critic's score of the frames rendered from the same history."""
    import scd.objectives

    model = tiny("scd", prediction="change", sample_temperature=0.0).train()  # no noise: the same frames each time
    frames, actions = clip(b=2, f=5)
    adversarial = objective(weight=1.0)
    adversarial.critic.eval()  # spectral norm's power iteration would move the critic at every call
    monkeypatch.setattr(scd.objectives, "flow_matching_loss", lambda *a, **k: torch.zeros(()))
    monkeypatch.setattr(AdversarialRollout, "critic_step", lambda self, real, fake, context: None)

    def score() -> float:
        with torch.no_grad():
            rendered = adversarial.rendered_frames(model, frames, actions)[:, 2:]
            return adversarial.critic(rendered, frames[:, 1:2].expand_as(rendered)).mean().item()

    monkeypatch.setattr(AdversarialRollout, "own_frames", lambda self, net, f, a, seed: f[:, None, 2:])  # recorded
    before = score()
    loss = adversarial(model, frames, actions)
    assert loss.item() == pytest.approx(-score(), abs=1e-6)  # weight 1: the loss is minus the critic's mean score
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert score() > before + 1e-4


def test_adversarial_training_resumes_exactly_with_its_critic(tmp_path):
    data = MovingSquares()
    cfg = TrainConfig(steps=4, batch=2, clip_len=4, lr=1e-3, warmup=1, ckpt_every=2, log_every=1,
                      flow=FlowConfig(action_dropout=0.1), rollout_steps=2, rollout_context=2, adversarial_weight=0.1,
                      critic_lr=1e-3)
    full = [float(r["loss"]) for r in train(tiny_config("scd"), data, tmp_path / "a", cfg, progress=False).read_log()]
    train(tiny_config("scd"), data, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "steps": 2}), progress=False)
    resumed = train(tiny_config("scd"), data, tmp_path / "b", cfg, progress=False)
    assert [float(r["loss"]) for r in resumed.read_log()] == full
    for (name, pa), pb in zip(load_model(tmp_path / "a").state_dict().items(),
                              load_model(tmp_path / "b").state_dict().values()):
        assert torch.equal(pa, pb), name


def test_adversarial_options_are_checked():
    with pytest.raises(ValueError, match="adversarial_weight needs rollout_steps >= 1"):
        TrainConfig(adversarial_weight=0.1)
    with pytest.raises(ValueError, match="adversarial_weight needs rollout_steps >= 1"):
        TrainConfig(adversarial_weight=0.1, rollout_steps=2, rollout_one_step=True)
    with pytest.raises(ValueError, match="adversarial_weight must be >= 0 and critic_lr > 0"):
        TrainConfig(adversarial_weight=0.1, rollout_steps=2, critic_lr=0.0)
    cfg = TrainConfig(adversarial_weight=0.1, rollout_steps=2, rollout_context=2)
    with pytest.raises(ValueError, match="pass the model"):
        cfg.objective()
    built = cfg.objective(tiny("scd"))
    assert isinstance(built, AdversarialRollout) and built.critic.frame_shape == FRAME and built.weight == 0.1
    with pytest.raises(ValueError, match=r"the critic scores frames of shape \(3, 16, 16\), got \(3, 8, 8\)"):
        built.critic(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="one context frame per frame"):
        built.critic(torch.zeros(2, *FRAME), torch.zeros(1, *FRAME))
    with pytest.raises(ValueError, match="H and W must be divisible by 4"):
        FrameCritic((3, 6, 8))
    with pytest.raises(ValueError, match="encoder reading the current frame"):
        objective().rendered_frames(tiny("scd", encoder_input="noisy_current"), *clip(b=1, f=3))
    with pytest.raises(ValueError, match="needs clips longer than that"):
        objective()(tiny("scd"), *clip(b=1, f=2))


def test_resuming_a_run_of_another_objective_with_a_critic_is_refused(tmp_path):
    cfg = TrainConfig(steps=1, batch=2, clip_len=4, ckpt_every=1, rollout_steps=2, rollout_context=2)
    train(tiny_config("scd"), MovingSquares(), tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="with AdversarialRollout: the checkpoint has no state of it"):
        train(tiny_config("scd"), MovingSquares(), tmp_path,
              TrainConfig(**{**cfg.__dict__, "steps": 2, "adversarial_weight": 0.1}), progress=False)
