"""Training loop, checkpoints and exact resumption on tiny synthetic clips."""

import os
import signal
import time

import pytest
import torch

from scd.checkpoint import latest_checkpoint, load_model, read_config
from scd.config import ModelConfig
from scd.flow import FlowConfig, sample_timesteps, shift_time
from scd.sampling import euler_sample, flow_schedule
from scd.train import StopRequests, TrainConfig, Trainer, train

from helpers import terminate_after_step


class MovingSquares(torch.utils.data.Dataset):
    """Clips of a square that moves by the action (0: stay, 1: right, 2: down)."""

    def __init__(self, n=32, clip_len=4, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            actions = torch.randint(0, 3, (clip_len,), generator=g)
            r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
            frames = []
            for a in actions.tolist():
                r, c = (r + (a == 2)) % (size - 4), (c + (a == 1)) % (size - 4)
                f = -torch.ones(3, size, size)
                f[:, r : r + 4, c : c + 4] = 1.0
                frames.append(f)
            self.items.append((torch.stack(frames), actions))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_config(arch):
    depth = dict(depth=2) if arch == "causal_dit" else dict(encoder_depth=1, decoder_depth=1)
    return ModelConfig(arch, frame_shape=(3, 16, 16), patch_size=4, hidden=32, head_dim=16, num_actions=3, **depth)


FLOW = FlowConfig(K=2, action_dropout=0.1)


@pytest.mark.parametrize("arch", ["scd", "causal_dit"])
def test_resumed_run_has_the_same_losses_as_an_uninterrupted_run(tmp_path, arch):
    data = MovingSquares()
    flow = FlowConfig(K=2, context_noise=0.05 if arch == "scd" else 0.0)
    cfg = TrainConfig(steps=6, batch=4, clip_len=4, lr=1e-3, warmup=2, ckpt_every=3, log_every=1, flow=flow)
    straight = train(tiny_config(arch), data, tmp_path / "a", cfg, progress=False)
    full = [float(r["loss"]) for r in straight.read_log()]

    train(tiny_config(arch), data, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "steps": 3}), progress=False)
    resumed = train(tiny_config(arch), data, tmp_path / "b", cfg, progress=False)
    assert [float(r["loss"]) for r in resumed.read_log()] == full
    assert resumed.step == 6
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_checkpoint_round_trip_and_self_description(tmp_path):
    data = MovingSquares()
    cfg = TrainConfig(steps=2, batch=2, clip_len=4, ckpt_every=1, keep_checkpoints=1, log_every=1, flow=FLOW)
    trainer = train(tiny_config("scd"), data, tmp_path, cfg, data_info={"source": "squares"}, progress=False)
    ckpts = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert ckpts == ["ckpt-0000002"]  # keep_checkpoints=1 pruned the first
    config = read_config(tmp_path)
    assert config["step"] == 2 and config["data"] == {"source": "squares"} and config["model"]["arch"] == "scd"
    assert config["train"]["flow"]["K"] == 2
    model = load_model(tmp_path)
    for (name, p), q in zip(model.state_dict().items(), trainer.ema.state_dict().values()):
        assert torch.equal(p, q), name
    assert len(trainer.read_log()) == 2 and (tmp_path / "loss.png").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary leftovers


def test_corrupt_truncated_or_missing_checkpoints_raise_clear_errors(tmp_path):
    cfg = TrainConfig(steps=1, batch=2, clip_len=4, flow=FLOW)
    train(tiny_config("causal_dit"), MovingSquares(), tmp_path, cfg, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope")
    weights = ckpt / "ema.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(ckpt)
    weights.write_bytes(data[:-8] + b"\x00" * 8)  # same size, damaged content
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        load_model(ckpt)


def test_dataset_that_does_not_fit_the_model_is_rejected(tmp_path):
    cfg = TrainConfig(steps=1, batch=2, clip_len=4, flow=FLOW)
    with pytest.raises(ValueError, match="dataset frames must have shape"):
        train(tiny_config("scd").replace(frame_shape=(3, 32, 32)), MovingSquares(), tmp_path, cfg, progress=False)
    data = MovingSquares()
    with pytest.raises(ValueError, match="unknown action id 2 in the dataset"):
        train(tiny_config("scd").replace(num_actions=2), data, tmp_path, cfg, progress=False)
    data.num_actions = 3
    with pytest.raises(ValueError, match="the dataset has 3 actions but the model knows 2"):
        train(tiny_config("scd").replace(num_actions=2), data, tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="clips have 4 frames"):
        train(tiny_config("scd"), MovingSquares(), tmp_path, TrainConfig(clip_len=8), progress=False)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0)


def test_euler_sampler_with_the_exact_velocity_recovers_a_gaussian_mixture():
    """For data on two points +-m (1-D), the exact flow velocity v(x, t) = E[eps - x0 | x_t] is known in closed
    form; integrating it from t=1 to 0 must carry N(0, 1) onto the two points in equal shares."""
    m = 2.0

    def velocity(x, t):
        t = t.view(-1, 1, 1, 1).clamp(min=1e-4)
        # x_t = (1-t) x0 + t eps; posterior weight of x0 = +m vs -m from the Gaussian likelihood of x_t.
        logit = 2 * (1 - t) * m * x / t**2
        mean_x0 = m * torch.tanh(logit / 2)
        return (x - mean_x0) / t  # eps - x0 with eps = (x - (1-t) x0) / t

    torch.manual_seed(0)
    noise = torch.randn(4000, 1, 1, 1)
    x0 = euler_sample(velocity, noise, flow_schedule(200, shift=3.0))
    assert (x0.abs() - m).abs().max() < 0.05
    assert abs((x0 > 0).float().mean().item() - 0.5) < 0.03


def test_timestep_distributions_and_shift():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_time(t, 1.0), t)
    assert (shift_time(t[1:-1], 3.0) > t[1:-1]).all()
    torch.manual_seed(0)
    u = sample_timesteps((20000,), FlowConfig(timesteps="uniform"))
    ln = sample_timesteps((20000,), FlowConfig(timesteps="logit_normal"))
    assert abs(u.mean() - 0.5) < 0.01 and abs(ln.mean() - 0.5) < 0.01
    assert ln.std() < u.std()  # logit-normal concentrates around the middle
    shifted = sample_timesteps((20000,), FlowConfig(timesteps="uniform", shift=3.0))
    assert shifted.mean() > 0.6
    with pytest.raises(ValueError, match="timesteps must be one of"):
        FlowConfig(timesteps="cosine")


def test_learning_rate_warms_up_then_decays_to_lr_min_on_a_cosine():
    constant = TrainConfig(steps=100, lr=1e-3, warmup=10)
    cosine = TrainConfig(steps=100, lr=1e-3, warmup=10, lr_min=1e-4)
    for cfg in (constant, cosine):
        assert [cfg.lr_factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
        assert cfg.lr_factor(9) == pytest.approx(1.0)
    assert constant.lr_factor(99) == 1.0
    assert cosine.lr_factor(99) == pytest.approx(0.1)  # lr_min / lr at the last step
    assert cosine.lr_factor(54) == pytest.approx(0.55)  # half way: the mean of 1 and 0.1
    decay = [cosine.lr_factor(s) for s in range(9, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    with pytest.raises(ValueError, match="lr_min"):
        TrainConfig(lr=1e-3, lr_min=1e-2)


def histories_read(arch, objective, changed_from: int, monkeypatch):
    """Run `objective` on two MovingSquares clips, the second's recorded frames from `changed_from` on negated (another
    recorded future), with the same random draws -> [(targets, history)] of each clip's flow-matching loss."""
    import scd.objectives as objectives
    from scd.models import build_model

    from helpers import perturb

    torch.manual_seed(0)
    model = perturb(build_model(tiny_config(arch)), 0.05)
    frames, actions = (torch.stack(x) for x in zip(*[MovingSquares()[i] for i in range(2)]))
    seen = []
    real_loss = objectives.flow_matching_loss
    monkeypatch.setattr(objectives, "flow_matching_loss",
                        lambda m, f, a, cfg, history: seen.append((f, history)) or real_loss(m, f, a, cfg, history=history))
    changed = frames.clone()
    changed[:, changed_from:] = -changed[:, changed_from:]
    for clip in (frames, changed):
        torch.manual_seed(3)
        loss = objective(model, clip, actions)
        assert torch.isfinite(loss) and loss.requires_grad
    assert model.training  # sampling in eval mode, then back
    assert torch.equal(seen[0][0], frames) and torch.equal(seen[1][0], changed)  # the targets: the recorded frames
    return seen


@pytest.mark.parametrize("arch", ["scd", "causal_dit"])
def test_rollout_training_reads_the_models_own_samples_as_history(arch, monkeypatch):
    """History = the recorded context then the model's own samples, which depend on the recorded context and
    actions only (not on the recorded future); the targets stay the recorded frames."""
    from scd.objectives import RolloutTraining

    (frames, history), (_, history2) = histories_read(arch, RolloutTraining(FlowConfig(), steps=2, context=1), 1,
                                                      monkeypatch)
    assert torch.equal(history[:, :1], frames[:, :1])
    assert not torch.allclose(history[:, 1:], frames[:, 1:])  # the model's frames, not the recorded ones
    torch.testing.assert_close(history2, history)  # the recorded future never reaches the history


@pytest.mark.parametrize("arch", ["scd", "causal_dit"])
def test_one_step_history_predicts_each_frame_from_the_recorded_frames_before_it(arch, monkeypatch):
    """OneStepHistory: after the recorded context, history frame j is the model's sample from recorded frames < j:
    changing the recorded frames from k on changes history frames k + 1 on only; the targets stay the recorded
    frames."""
    from scd.objectives import OneStepHistory

    k = 2
    (frames, history), (_, history2) = histories_read(arch, OneStepHistory(FlowConfig(), steps=2, context=1), k,
                                                      monkeypatch)
    assert torch.equal(history[:, :1], frames[:, :1])
    assert not torch.allclose(history[:, 1:], frames[:, 1:])  # the model's frames, not the recorded ones
    torch.testing.assert_close(history2[:, : k + 1], history[:, : k + 1])
    assert (history2[:, k + 1 :] - history[:, k + 1 :]).abs().amax() > 1e-3
    assert TrainConfig(rollout_steps=2, rollout_one_step=True, clip_len=4).objective() == OneStepHistory(steps=2)
    with pytest.raises(ValueError, match="rollout_one_step needs rollout_steps >= 1"):
        TrainConfig(rollout_one_step=True)


def test_rollout_training_resumes_exactly(tmp_path):
    data = MovingSquares()
    cfg = TrainConfig(steps=4, batch=2, clip_len=4, lr=1e-3, warmup=1, ckpt_every=2, log_every=1, flow=FLOW,
                      rollout_steps=2)
    full = [float(r["loss"]) for r in train(tiny_config("scd"), data, tmp_path / "a", cfg, progress=False).read_log()]
    train(tiny_config("scd"), data, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "steps": 2}), progress=False)
    resumed = train(tiny_config("scd"), data, tmp_path / "b", cfg, progress=False)
    assert [float(r["loss"]) for r in resumed.read_log()] == full
    assert read_config(tmp_path / "a")["train"]["rollout_steps"] == 2


def test_ema_is_an_exponential_moving_average_of_the_weights(tmp_path):
    from scd.models import build_model
    from scd.train import Trainer

    torch.manual_seed(0)
    trainer = Trainer(build_model(tiny_config("scd")), MovingSquares(), tmp_path,
                      TrainConfig(batch=2, clip_len=4, lr=1e-2, ema_decay=0.5, flow=FLOW))
    for step in (1, 2):
        before = [e.clone() for e in trainer.ema.parameters()]
        trainer.train_step()
        decay = min(0.5, (1 + step) / (10 + step))  # the decay warms up: 2/11, then 3/12
        for e, b, p in zip(trainer.ema.parameters(), before, trainer.model.parameters()):
            torch.testing.assert_close(e, decay * b + (1 - decay) * p)
    assert any(not torch.equal(e, p) for e, p in zip(trainer.ema.parameters(), trainer.model.parameters()))


def untrained_change_model_on_a_static_clip(arch: str, prediction: str):
    """An untrained change-prediction model (d_hat = 0) and a static clip (2, 4, 3, 16, 16) with its actions."""
    from scd.models import build_model

    depth = dict(depth=2) if arch == "causal_dit" else dict(encoder_depth=1, decoder_depth=1)
    model = build_model(ModelConfig(arch, frame_shape=(3, 16, 16), patch_size=4, hidden=32, head_dim=16,
                                    num_actions=5, prediction=prediction, **depth))
    torch.manual_seed(0)
    frames = torch.rand(2, 1, 3, 16, 16).mul(2).sub(1).expand(2, 4, 3, 16, 16)
    return model, frames, torch.randint(0, 5, (2, 4))


@pytest.mark.parametrize("arch", ["causal_dit", "scd"])
def test_change_prediction_starts_at_copy_last_and_frame_zero_carries_no_loss(arch):
    """On a static clip (every frame equal) an untrained change-prediction model is already right for frames 1..F-1
    (x_hat = x_{i-1} = x_i), so its loss is ~0; counting frame 0 (no x_{i-1}) would add |x|^2 / t^2 >> 1."""
    from scd.flow import flow_matching_loss

    model, frames, actions = untrained_change_model_on_a_static_clip(arch, "change")
    flow = FlowConfig(history_noise=0.3, K=2)
    assert flow_matching_loss(model, frames, actions, flow).item() < 0.02
    moving = frames + torch.linspace(0, 0.5, 4).view(1, 4, 1, 1, 1)  # brighter every frame: copy-last is wrong
    assert flow_matching_loss(model, moving, actions, flow).item() > 0.1


@pytest.mark.parametrize("arch", ["causal_dit", "scd"])
def test_noisy_change_prediction_changes_from_the_corrupted_history_frame(arch):
    """The "change-noisy" prediction anchors on x_{i-1} as read, after history noise: on a static clip the
    untrained model (d_hat = 0) is now wrong by the corruption, and right again without history noise."""
    from scd.flow import flow_matching_loss

    model, frames, actions = untrained_change_model_on_a_static_clip(arch, "change-noisy")
    assert flow_matching_loss(model, frames, actions, FlowConfig(history_noise=0.0, K=2)).item() < 0.02
    assert flow_matching_loss(model, frames, actions, FlowConfig(history_noise=0.3, K=2)).item() > 0.04  # ~0.06


def test_a_cuda_device_gets_an_index(monkeypatch):
    # torch.random.fork_rng (each micro-batch's noise stream) needs cuda:N; `--device cuda` once crashed there.
    from scd.train import Processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert Processes().device("cuda") == torch.device("cuda", 1)
    assert Processes().device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="2 CUDA device"):
        Processes().device("cuda:2")


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, monkeypatch):
    data = MovingSquares()
    cfg = TrainConfig(steps=5, batch=4, clip_len=4, lr=1e-3, warmup=2, ckpt_every=100, log_every=1, flow=FLOW)
    full = [float(r["loss"]) for r in train(tiny_config("scd"), data, tmp_path / "a", cfg, progress=False).read_log()]
    with terminate_after_step(monkeypatch, Trainer, 2) as unhandled:
        stopped = train(tiny_config("scd"), data, tmp_path / "b", cfg, progress=False)
        assert stopped.step == 2 and latest_checkpoint(tmp_path / "b").name == "ckpt-0000002" and not unhandled
        os.kill(os.getpid(), signal.SIGTERM)  # the run gave the handler back
        assert unhandled == [1]
    resumed = train(tiny_config("scd"), data, tmp_path / "b", cfg, progress=False)
    assert resumed.step == 5 and [float(r["loss"]) for r in resumed.read_log()] == full


class WorkerPids(MovingSquares):
    """MovingSquares that writes the pid of every DataLoader worker that loads a clip to `path`."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()}\n")
        return super().__getitem__(i)


def test_stop_signals_that_reach_the_data_loader_workers_leave_them_running(tmp_path, monkeypatch):
    """A scheduler signals every process of the job, the loader's workers too: SIGTERM and SIGINT to the workers
    after step 2 change nothing (a dead worker would fail the next batch), SIGTERM to the run after step 4 stops it
    there with a checkpoint."""
    pids = tmp_path / "pids"
    data = WorkerPids(pids)
    cfg = TrainConfig(steps=6, batch=4, clip_len=4, lr=1e-3, warmup=2, ckpt_every=100, log_every=1, flow=FLOW)
    real_step = Trainer.train_step

    def step_then_signal_the_workers(self, *args):
        out = real_step(self, *args)
        if self.step == 2:
            for pid in {int(p) for p in pids.read_text().split()}:
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGINT)
            time.sleep(0.2)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal_the_workers)
    with terminate_after_step(monkeypatch, Trainer, 4) as unhandled:
        stopped = train(tiny_config("scd"), data, tmp_path / "run", cfg, progress=False, workers=1)
    assert stopped.step == 4 and latest_checkpoint(tmp_path / "run").name == "ckpt-0000004" and not unhandled


def test_a_second_ctrl_c_interrupts_at_once():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
