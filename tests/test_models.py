"""Properties of the two architectures on tiny configs: caching, causality, frame-wise decoding, determinism."""

import pytest
import torch

from scd.config import ModelConfig, get_preset
from scd.flow import interpolate
from scd.models import SCD, CausalDiT, build_model
from scd.sampling import Guidance, flow_schedule, generate

from helpers import perturb

FRAME = (3, 16, 16)


def tiny(arch: str, **kw) -> torch.nn.Module:
    depth = dict(depth=3) if arch == "causal_dit" else dict(encoder_depth=2, decoder_depth=2)
    kw = dict(frame_range=None) | kw  # the test frames are Gaussian, not pixels in [-1, 1]
    cfg = ModelConfig(arch, frame_shape=FRAME, patch_size=4, hidden=32, head_dim=16, num_actions=5, **depth, **kw)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    perturb(model, 0.05)
    return model


ARCHS = ["causal_dit", "scd"]


def clip(b=2, f=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, *FRAME, generator=g), torch.randint(0, 5, (b, f), generator=g)


def uncached_rollout(model, context, actions, steps, seed):
    """Algorithm 2 by full recomputation: every denoising step reruns the model over the whole history."""
    gen = torch.Generator().manual_seed(seed)
    schedule = flow_schedule(steps)
    frames = context.clone()
    b, c0 = context.shape[:2]
    out = []
    for i in range(c0, actions.shape[1]):
        x = noise = torch.randn((b, *FRAME), generator=gen)
        a = actions[:, : i + 1]
        for s in range(steps):
            t = schedule[s].expand(b)
            seq = torch.cat([frames, x[:, None]], dim=1)  # history + current noisy frame
            t_seq = torch.zeros(b, i + 1)
            t_seq[:, i] = t
            if isinstance(model, SCD) and model.config.encoder_input == "noisy_current":
                # c_i reads frames < i and the frame's starting noise at t = 1 (supp. E.1 at inference)
                x_enc = torch.cat([frames, noise[:, None]], dim=1)
                c = model.encoder_input.encode(model, seq, a, torch.zeros(b, i + 1), x_enc, torch.ones(b, i + 1))[:, i]
                v = model.decode(x, t, c, a[:, i])
            elif isinstance(model, SCD):
                c = model.encode(seq, a)[:, i]  # c_i depends only on frames < i
                v = model.decode(x, t, c, a[:, i])
            else:
                v = model.velocity(seq, t_seq, model.training_context(seq, a), a)[:, i]
            x = x + (schedule[s + 1] - schedule[s]) * v
        frames = torch.cat([frames, x[:, None]], dim=1)
        out.append(x)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("c0", [0, 1, 3])
def test_cached_rollout_equals_uncached_recomputation(arch, c0):
    model = tiny(arch)
    frames, actions = clip(f=6)
    cached = generate(model, frames[:, :c0], actions, steps=3, seed=7)[:, 0]
    reference = uncached_rollout(model, frames[:, :c0], actions, steps=3, seed=7)
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("c0", [0, 1, 3])
def test_noisy_current_encoder_cached_rollout_equals_recomputation(c0):
    model = tiny("scd", encoder_input="noisy_current")
    frames, actions = clip(f=6)
    cached = generate(model, frames[:, :c0], actions, steps=3, seed=7)[:, 0]
    reference = uncached_rollout(model, frames[:, :c0], actions, steps=3, seed=7)
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)
    window = generate(model, frames[:, :1], actions, steps=1, seed=7, window=2)  # past the cache's capacity
    assert torch.isfinite(window).all()


@pytest.mark.parametrize("fusion", ["seq_offset", "seq_same", "channel"])
def test_scd_fusions_stream_like_training(fusion):
    model = tiny("scd", fusion=fusion)
    frames, actions = clip(f=4)
    cached = generate(model, frames[:, :2], actions, steps=2, seed=3)[:, 0]
    torch.testing.assert_close(cached, uncached_rollout(model, frames[:, :2], actions, 2, 3), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_changing_frame_j_never_changes_earlier_outputs(arch):
    model = tiny(arch)
    frames, actions = clip(f=6)
    t = torch.rand(2, 6)
    x_t = interpolate(frames, torch.randn_like(frames), t)
    j = 3

    def outputs(frames, x_t, actions):
        if isinstance(model, SCD):
            return model.encode(frames, actions)  # c_i = E(x_<i, a_<=i)
        return model.velocity(x_t, t, model.training_context(frames, actions), actions)

    base = outputs(frames, x_t, actions)
    frames2, x_t2, actions2 = frames.clone(), x_t.clone(), actions.clone()
    frames2[:, j] += 1.0
    x_t2[:, j] -= 1.0
    actions2[:, j] = (actions2[:, j] + 1) % 5
    changed = outputs(frames2, x_t2, actions2)
    # c_j does not see x_j (only x_<j), so for SCD frames <= j are unchanged by x_j; the action a_j reaches c_j.
    frames_only = outputs(frames2, x_t2, actions)
    torch.testing.assert_close(changed[:, :j], base[:, :j], atol=1e-6, rtol=0)
    if isinstance(model, SCD):
        torch.testing.assert_close(frames_only[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
    assert (changed[:, j + 1 :] - base[:, j + 1 :]).abs().max() > 1e-4  # the future does see frame j


def test_scd_decoder_sees_other_frames_only_through_context():
    model = tiny("scd")
    frames, actions = clip(f=5)
    c = model.encode(frames, actions)
    t = torch.rand(2, 5)
    x_t = interpolate(frames, torch.randn_like(frames), t).requires_grad_(True)
    v = model.velocity(x_t, t, c, actions)
    # d v_i / d x_t[j] == 0 for j != i: the decoder attends to [c_i ; x_i] only.
    grad = torch.autograd.grad(v[:, 2].sum(), x_t)[0]
    assert grad[:, 2].abs().sum() > 0
    assert grad[:, [0, 1, 3, 4]].abs().max() == 0
    # With c fixed, frame 2 decoded alone equals frame 2 decoded inside the clip.
    alone = model.decode(x_t[:, 2], t[:, 2], c[:, 2], actions[:, 2])
    torch.testing.assert_close(alone, v[:, 2], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_video(arch):
    model = tiny(arch)
    frames, actions = clip(b=1, f=5)
    kw = dict(steps=2, num_samples=2)
    a = generate(model, frames[:, :2], actions, seed=11, **kw)
    b = generate(model, frames[:, :2], actions, seed=11, **kw)
    c = generate(model, frames[:, :2], actions, seed=12, **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[:, 0], a[:, 1])  # trajectories draw their own noise


def test_guidance_runs_and_changes_the_result():
    model = tiny("scd")
    frames, actions = clip(b=1, f=4)
    plain = generate(model, frames[:, :2], actions, steps=2, seed=1)
    ctx_cfg = generate(model, frames[:, :2], actions, steps=2, seed=1, guidance=Guidance(1.5, context_noise=0.3))
    act_cfg = generate(model, frames[:, :2], actions, steps=2, seed=1, guidance=Guidance(2.0, null_action=True))
    assert not torch.allclose(plain, ctx_cfg) and not torch.allclose(plain, act_cfg)
    dit = tiny("causal_dit")
    generate(dit, frames[:, :2], actions, steps=2, guidance=Guidance(2.0, null_action=True))
    with pytest.raises(ValueError, match="needs an SCD model"):
        generate(dit, frames[:, :2], actions, steps=2, guidance=Guidance(1.5, context_noise=0.1))


def test_guidance_scale_one_is_the_unguided_rollout():
    model = tiny("causal_dit")
    frames, actions = clip(b=1, f=4)
    plain = generate(model, frames[:, :2], actions, steps=2, seed=1)
    scale_one = generate(model, frames[:, :2], actions, steps=2, seed=1, guidance=Guidance(1.0, null_action=True))
    torch.testing.assert_close(plain, scale_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_sliding_window_rolls_past_its_capacity(arch):
    model = tiny(arch)
    frames, actions = clip(b=1, f=9)
    out = generate(model, frames[:, :2], actions, steps=1, window=3)
    assert out.shape == (1, 1, 7, *FRAME) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="exceeds the history window"):
        generate(model, frames[:, :4], actions, steps=1, window=3)


def test_presets_build_and_count_block_passes():
    for name in ["scd-tiny", "dit-tiny"]:
        assert sum(p.numel() for p in build_model(get_preset(name)).parameters()) > 0
    with torch.device("meta"):
        scd_b, dit_b = build_model(get_preset("scd-b")), build_model(get_preset("dit-b"))
    assert scd_b.block_passes(50) == 8 + 50 * 4  # 208 as in the paper's Tab. 5
    assert dit_b.block_passes(50) == 12 * 50 + 12  # Tab. 5's 600 + the caching pass
    assert isinstance(build_model(get_preset("scd-tiny")), SCD)
    assert isinstance(build_model(get_preset("dit-tiny")), CausalDiT)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(patch_size=5), "patch_size 5 must divide"),
        (dict(hidden=100), "multiple of head_dim"),
        (dict(encoder_depth=0), "encoder_depth >= 1"),
        (dict(fusion="add"), "fusion must be one of"),
        (dict(arch="rnn"), "arch must be one of"),
    ],
)
def test_config_that_does_not_fit_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        get_preset("scd-tiny").replace(**changes)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("scd-huge")


def test_bad_inputs_name_the_problem():
    model = tiny("scd")
    frames, actions = clip(b=1, f=4)
    with pytest.raises(ValueError, match=r"frames must have shape \(B, F, 3, 16, 16\)"):
        model.encode(torch.randn(1, 4, 3, 32, 32), actions)
    bad = actions.clone()
    bad[0, 1] = 9
    with pytest.raises(ValueError, match="unknown action id 9"):
        generate(model, frames[:, :2], bad, steps=1)
    with pytest.raises(ValueError, match="actions must have shape"):
        generate(model, frames[:, :2], actions[:, :2], steps=1)


@pytest.mark.parametrize("arch, kw", [("causal_dit", {}), ("scd", {}), ("scd", dict(encoder_input="noisy_current"))])
@pytest.mark.parametrize("window", [1, 3])
def test_window_is_the_number_of_past_frames_the_next_frame_sees(arch, kw, window):
    """One causal block, so cached K/V carry no older frames: the next frame depends on exactly `window` frames."""
    depth = dict(depth=1) if arch == "causal_dit" else dict(encoder_depth=1, decoder_depth=1)
    cfg = ModelConfig(arch, frame_shape=FRAME, patch_size=4, hidden=32, head_dim=16, num_actions=5, **depth, **kw)
    torch.manual_seed(0)
    model = perturb(build_model(cfg).eval(), 0.2)
    frames, actions = clip(b=1, f=window + 3)
    n = frames.shape[1]

    def next_velocity(frames):
        stream = model.new_stream(1, window)
        with torch.no_grad():
            for j in range(n):  # one frame at a time, so older frames leave the cache
                model.prefill(stream, frames[:, j : j + 1], actions[:, j : j + 1])
            noise = torch.randn((1, *FRAME), generator=torch.Generator().manual_seed(0))
            ctx = model.frame_context(stream, actions[:, 0], noise)
            return model.frame_velocity(stream, ctx, noise, torch.ones(1), actions[:, 0])

    def changed(j):
        edited = frames.clone()
        edited[:, j] += 1.0
        return edited

    base = next_velocity(frames)
    torch.testing.assert_close(next_velocity(changed(n - window - 1)), base)  # just outside the window
    assert not torch.allclose(next_velocity(changed(n - window)), base, atol=1e-4)  # the oldest frame inside it


def test_window_must_be_a_positive_integer():
    model = tiny("scd")
    frames, actions = clip(b=1, f=3)
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="window must be an integer >= 1"):
            generate(model, frames[:, :1], actions, steps=1, window=bad)


def test_a_kv_cache_too_large_for_memory_says_so_with_its_size():
    from scd.nn import KVCache

    cache = KVCache(layers=4, slots=10**6, tokens_per_frame=64)
    with pytest.raises(MemoryError, match=r"KV cache for 1000000 frames needs .* GB"):
        cache.open(1).extend(0, torch.zeros(1, 3, 64, 2**20), torch.zeros(1, 3, 64, 2**20))


def test_python_api_rejects_bad_rollout_inputs_with_clear_errors():
    from scd.sampling import Streamer

    model = tiny("scd")
    frames, actions = clip(b=1, f=4)
    nan = frames.clone()
    nan[0, 1, 0, 0, 0] = float("nan")
    inf = frames.clone()
    inf[0, 0, 1, 2, 3] = float("inf")
    for bad in (nan, inf):
        with pytest.raises(ValueError, match="contain NaN or infinite values"):
            generate(model, bad[:, :2], actions, steps=1)
    with pytest.raises(ValueError, match="must be uint8 frames \\(B, F, H, W, 3\\) or floats in the model's space, "
                                         "got torch.uint8"):
        generate(model, frames[:, :2].to(torch.uint8), actions, steps=1)
    half = generate(model, frames[:, :2].half(), actions, steps=1, seed=0)  # other float dtypes are cast
    torch.testing.assert_close(half, generate(model, frames[:, :2].half().float(), actions, steps=1, seed=0))
    for steps in (2.5, 0, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            generate(model, frames[:, :2], actions, steps=steps)
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        generate(model, frames[:, :2], actions, steps=1, shift=0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        generate(model, frames[:, :2], actions, steps=1, num_samples=0)
    null = actions.clone()
    null[0, 3] = model.null_action
    with pytest.raises(ValueError, match="is the null action"):
        generate(model, frames[:, :2], null, steps=1)
    streamer = Streamer(model, frames[:, :2], actions[:, :2], steps=1)
    with pytest.raises(ValueError, match="is the null action"):
        streamer.step(model.null_action)
    with pytest.raises(ValueError, match="prefill needs at least one frame"):
        model.prefill(model.new_stream(1, 4), frames[:, :0], actions[:, :0])


def noisy_history_rollout(model, context, actions, steps, seed):
    """Algorithm 2 by full recomputation with history noise: every history frame (context and generated) is
    corrupted to the model's history_noise flow time with the rollout's history stream, and read at that time;
    change prediction generates the change from the previous frame before corruption ("change") or as read
    ("change-noisy")."""
    from scd.sampling import HISTORY_NOISE, _generator

    frame_gen, history_gen = torch.Generator().manual_seed(seed), _generator(seed, HISTORY_NOISE)
    tau = model.config.history_noise
    schedule = flow_schedule(steps)
    b, c0 = context.shape[:2]

    def as_history(x):
        return interpolate(x, torch.randn(x.shape, generator=history_gen), torch.full(x.shape[:-3], tau))

    change, from_read = model.prediction.needs_anchor, model.prediction.anchor_is_read
    history = as_history(context) if c0 else context
    anchor = (history if from_read else context)[:, -1] if c0 and change else None
    out = []
    for i in range(c0, actions.shape[1]):
        x = torch.randn((b, *FRAME), generator=frame_gen)
        a = actions[:, : i + 1]
        for s in range(steps):
            t = schedule[s].expand(b)
            seq = torch.cat([history, x[:, None]], dim=1)
            history_t = torch.full((b, i + 1), tau)
            if isinstance(model, SCD):
                v = model.decode(x, t, model.encode(seq, a, history_t)[:, i], a[:, i])
            else:
                t_seq = history_t.clone()
                t_seq[:, i] = t
                v = model.velocity(seq, t_seq, model.training_context(seq, a, history_t), a)[:, i]
            x = x + (schedule[s + 1] - schedule[s]) * v
        frame = x if anchor is None else anchor + x  # change prediction: x is the change from x_{i-1}
        read = as_history(frame[:, None])
        history = torch.cat([history, read], dim=1)
        anchor = (read[:, 0] if from_read else frame) if change else None
        out.append(frame)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prediction,c0", [("x", 0), ("x", 2), ("change", 2), ("change-noisy", 2)])
def test_x_prediction_with_history_noise_streams_like_training(arch, prediction, c0):
    model = tiny(arch, prediction=prediction, history_noise=0.2)
    frames, actions = clip(f=5)
    cached = generate(model, frames[:, :c0], actions, steps=3, seed=11)[:, 0]
    reference = noisy_history_rollout(model, frames[:, :c0], actions, steps=3, seed=11)
    torch.testing.assert_close(cached, reference, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_untrained_change_prediction_copies_the_last_frame(arch):
    """The zero-initialised head outputs no change: every generated frame is the last context frame, clamped to the
    frame range (the Gaussian test frames leave it) before it becomes history."""
    depth = dict(depth=3) if arch == "causal_dit" else dict(encoder_depth=2, decoder_depth=2)
    model = build_model(ModelConfig(arch, frame_shape=FRAME, patch_size=4, hidden=32, head_dim=16, num_actions=5,
                                    prediction="change", history_noise=0.1, **depth)).eval()
    frames, actions = clip(f=5)
    out = generate(model, frames[:, :2], actions, steps=4, seed=3)[:, 0]
    torch.testing.assert_close(out, frames[:, 1:2].clamp(-1, 1).expand_as(out), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="change prediction needs at least one context frame"):
        generate(model, frames[:, :0], actions, steps=2)


@pytest.mark.parametrize("arch", ARCHS)
def test_history_noise_level_reaches_the_network(arch):
    """The flow time of the history frames is conditioning: the same frames read at another level give other
    outputs (training path and stream)."""
    model = tiny(arch)
    frames, actions = clip(f=4)
    t = torch.rand(2, 4)
    x_t = interpolate(frames, torch.randn_like(frames), t)
    clean = model.velocity(x_t, t, model.training_context(frames, actions), actions)
    noisy = model.velocity(x_t, t, model.training_context(frames, actions, torch.full((2, 4), 0.3)), actions)
    torch.testing.assert_close(clean[:, 0], noisy[:, 0])  # frame 0 has no history
    assert (clean[:, 1:] - noisy[:, 1:]).abs().max() > 1e-4
    streamed = [generate(tiny(arch, history_noise=h), frames[:, :2], actions, steps=2, seed=0) for h in (0.0, 0.3)]
    assert (streamed[0] - streamed[1]).abs().max() > 1e-4


def test_clean_prediction_turns_the_clean_frame_into_the_true_velocity():
    from scd.flow import CleanPrediction, VelocityPrediction

    x, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0])
    x_t = interpolate(x, eps, t)
    torch.testing.assert_close(CleanPrediction().to_velocity(x, x_t, t), eps - x)
    assert VelocityPrediction().to_velocity(eps - x, x_t, t) is not None
    # Near t = 0 the division is clamped (finite), and an Euler step from t to 0 lands exactly on x_hat.
    tiny_t = torch.full((4,), 1e-6)
    v = CleanPrediction(t_min=0.05).to_velocity(x, interpolate(x, eps, tiny_t), tiny_t)
    assert torch.isfinite(v).all() and v.abs().max() < 1e-3  # (x_t - x) / 0.05 with x_t ~ x
    step = torch.full((4,), 0.2)
    x_step = interpolate(x, eps, step)
    landed = x_step - 0.2 * CleanPrediction().to_velocity(x, x_step, step)
    torch.testing.assert_close(landed, x)


def test_guidance_noise_has_its_own_stream_so_guided_runs_are_paired():
    """A guided and an unguided rollout with one seed start every frame from the same noise."""
    model = tiny("scd")
    frames, actions = clip(f=5)
    starts = {}
    for name, guidance in (("plain", None), ("guided", Guidance(1.5, context_noise=0.3))):
        seen = []
        generate(model, frames[:, :2], actions, steps=2, seed=5, guidance=guidance,
                 callback=lambda info: seen.append(info["x"].clone()) if info["step"] == 0 else None)
        starts[name] = torch.stack(seen)
    assert starts["plain"].shape[0] == 3
    torch.testing.assert_close(starts["plain"], starts["guided"], atol=0, rtol=0)


def test_seq_offset_places_the_context_one_frame_earlier_in_rope_time():
    """seq_offset and seq_same differ only in the RoPE frame coordinate of the c_i tokens (one frame before the
    noisy frame vs the same frame): with the same weights their decoders must disagree."""
    offset = tiny("scd", fusion="seq_offset")
    same = tiny("scd", fusion="seq_same")
    same.load_state_dict(offset.state_dict())
    frames, actions = clip(f=3)
    c = offset.encode(frames, actions)
    t = torch.full((2, 3), 0.5)
    x_t = interpolate(frames, torch.randn_like(frames), t)
    assert (offset.velocity(x_t, t, c, actions) - same.velocity(x_t, t, c, actions)).abs().max() > 1e-4
    assert offset.decoder.fuse.context_frame == same.decoder.fuse.context_frame - 1  # RoPE is relative: a 1-frame gap


@pytest.mark.parametrize("arch", ARCHS)
def test_history_time_of_frame_j_reaches_only_later_frames(arch):
    """Frame j's history flow time is how frame j is read as the past: it changes outputs for frames > j only."""
    model = tiny(arch)
    frames, actions = clip(f=5)
    t = torch.full((2, 5), 0.5)
    x_t = interpolate(frames, torch.randn_like(frames), t)
    history_t = torch.full((2, 5), 0.1)
    j = 2
    changed_t = history_t.clone()
    changed_t[:, j] = 0.4

    def outputs(h):
        return model.velocity(x_t, t, model.training_context(frames, actions, h), actions)

    base, changed = outputs(history_t), outputs(changed_t)
    torch.testing.assert_close(changed[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
    assert (changed[:, j + 1] - base[:, j + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch, kw", [("causal_dit", {}), ("scd", {}), ("scd", dict(encoder_input="noisy_current"))])
def test_frame_context_only_reads_the_stream_and_commit_moves_it_on(arch, kw):
    """A context for another action (a guidance branch), asked for after the frame's own, changes no frame."""
    model = tiny(arch, **kw)
    frames, actions = clip(b=1, f=5)

    def roll(other_branch: bool) -> torch.Tensor:
        stream, out = model.new_stream(1, 8), []
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model.prefill(stream, frames[:, :2], actions[:, :2])
            for i in range(2, 5):
                noise, a = torch.randn((1, *FRAME), generator=g), actions[:, i]
                ctx = model.frame_context(stream, a, noise)
                if other_branch:
                    model.frame_context(stream, (a + 1) % 5, noise)
                frame = noise - model.frame_velocity(stream, ctx, noise, torch.ones(1), a)  # one Euler step to t = 0
                model.commit(stream, frame, a)
                out.append(frame)
        return torch.stack(out)

    assert torch.equal(roll(True), roll(False))


@pytest.mark.parametrize("field, option, own, other, bad, message", [
    ("sample_steps", "steps", 3, 6, 0, "sample_steps must be an integer >= 1"),
    ("sample_temperature", "temperature", 0.5, 1.0, -0.1, "sample_temperature must be a finite number >= 0"),
    ("sample_shift", "shift", 0.25, 1.0, 0, "sample_shift must be a finite number > 0"),
])
def test_a_rollout_takes_the_models_own_sampler_defaults_unless_told(field, option, own, other, bad, message):
    model = tiny("scd", **{"sample_steps": 2, field: own})
    frames, actions = clip(f=4)
    default = generate(model, frames[:, :2], actions, seed=5)
    torch.testing.assert_close(default, generate(model, frames[:, :2], actions, seed=5, **{option: own}))
    assert (default - generate(model, frames[:, :2], actions, seed=5, **{option: other})).abs().max() > 1e-4
    for value in (bad, float("nan"), True):
        with pytest.raises(ValueError, match=message):
            get_preset("scd-tiny").replace(**{field: value})


def test_sample_window_is_a_window_or_none():
    assert get_preset("scd-tiny").replace(sample_window=5).sample_window == 5
    for bad in (0, 2.5, True, "7"):
        with pytest.raises(ValueError, match="sample_window must be an integer >= 1 or None"):
            get_preset("scd-tiny").replace(sample_window=bad)


def test_temperature_scales_the_starting_noise():
    model = tiny("scd")
    frames, actions = clip(f=4)
    # at temperature 0 every seed starts from the same (zero) noise: the rollout no longer depends on the seed
    cold = generate(model, frames[:, :2], actions, temperature=0.0, seed=5)
    torch.testing.assert_close(cold, generate(model, frames[:, :2], actions, temperature=0.0, seed=6))
    warm = generate(model, frames[:, :2], actions, temperature=0.5, seed=5)
    assert (warm - generate(model, frames[:, :2], actions, temperature=0.5, seed=6)).abs().max() > 1e-4
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            generate(model, frames[:, :2], actions, temperature=bad)
