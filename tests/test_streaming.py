"""The fast streaming path against plain references: the ring-buffer KV cache against the copying cache it replaced,
chunked prefill against one dense pass, guidance branches batched into one pass against one pass per branch, videos
that join and leave a running batch against the same videos streamed alone."""

import pytest
import torch

import scd.models
import scd.nn
from scd.nn import KVCache
from scd.sampling import (GUIDANCE_NOISE, HISTORY_NOISE, Guidance, Streamer, _generator, euler_sample, flow_schedule,
                          generate)

from test_models import FRAME, clip, tiny


class CopyingCache:
    """The KV cache before the ring buffer, with the same interface: committed tokens in order at the front of the
    buffer; a pass makes room for its new frames by copying the newest whole frames to the front (evicting the
    oldest), writes its tokens right after them and attends every committed token and its own."""

    def __init__(self, layers, slots, tokens_per_frame, spare=0, device=None, first_frame=0):
        self.layers, self.slots, self.spare, self.tokens_per_frame = layers, slots, spare, tokens_per_frame
        self.k = self.v = None
        self.length = self.frames = 0
        self.pos = torch.zeros((), dtype=torch.long)
        self.chunk = scd.nn.PREFILL_CHUNK

    def open(self, n=1, branches=1):
        p = self.tokens_per_frame
        overflow = self.length + n * p - self.slots * p  # the frame's versions take the room of one frame
        if overflow > 0:
            keep = self.length - -(-overflow // p) * p
            for buf in (self.k, self.v):
                buf[:, :, :, :keep] = buf[:, :, :, self.length - keep : self.length].clone()
            self.length = keep
        frame_pos = self.pos + (torch.arange(n) if branches == 1 else torch.zeros(branches, dtype=torch.long))
        return CopyingPass(self, self.length, max(n, branches) * p, frame_pos)

    def commit(self, n):
        self.length += n * self.tokens_per_frame
        self.frames += n
        self.pos += n

    write_history = KVCache.write_history


class CopyingPass:
    def __init__(self, cache, start, n_tokens, frame_pos):
        self.cache, self.start, self.n, self.frame_pos = cache, start, n_tokens, frame_pos

    def mask(self, new):
        new = torch.ones(self.n, self.n, dtype=torch.bool) if new is None else new
        return torch.cat([torch.ones(self.n, self.start, dtype=torch.bool), new], dim=1)

    def extend(self, layer, k, v):
        c = self.cache
        if c.k is None:
            shape = (c.layers, k.shape[0], k.shape[1], (c.slots + c.spare) * c.tokens_per_frame, k.shape[3])
            c.k, c.v = torch.zeros(shape), torch.zeros(shape)
        end = self.start + self.n
        c.k[layer, :, :, self.start : end], c.v[layer, :, :, self.start : end] = k, v
        return c.k[layer, :, :, :end], c.v[layer, :, :, :end]


OPTIONS = [  # (arch, config changes, guidance)
    ("causal_dit", {}, None),
    ("causal_dit", dict(prediction="x", history_noise=0.2), Guidance(2.0, null_action=True)),
    ("causal_dit", dict(prediction="change"), None),
    ("scd", {}, None),
    ("scd", dict(fusion="seq_same", prediction="change-noisy", history_noise=0.2), Guidance(1.5, context_noise=0.3)),
    ("scd", dict(fusion="channel", prediction="x"), Guidance(2.0, null_action=True, context_noise=0.2)),
    ("scd", dict(encoder_input="noisy_current"), None),
    ("scd", dict(encoder_input="noisy_current", prediction="change", history_noise=0.1),
     Guidance(2.0, null_action=True)),
]


@pytest.mark.parametrize("arch, changes, guidance", OPTIONS)
@pytest.mark.parametrize("window", [2, 4])
def test_ring_buffer_rollout_equals_the_copying_cache_past_its_capacity(arch, changes, guidance, window, monkeypatch):
    model = tiny(arch, **changes)
    frames, actions = clip(f=9)
    kw = dict(steps=2, seed=3, num_samples=2, window=window, guidance=guidance)
    ring = generate(model, frames[:, :2], actions, **kw)
    monkeypatch.setattr(scd.models, "KVCache", CopyingCache)
    copying = generate(model, frames[:, :2], actions, **kw)
    torch.testing.assert_close(ring, copying, atol=2e-5, rtol=1e-4)


def test_ring_buffer_rollout_under_a_surgery_equals_the_copying_cache(monkeypatch):
    from scd.surgery import Surgery, operated

    model = tiny("causal_dit")
    frames, actions = clip(f=8)
    with operated(model, Surgery.skip_after(1, 3, keep_prefix=1, keep_suffix=1, diagonal_last=1)):
        ring = generate(model, frames[:, :1], actions, steps=3, seed=1, window=3)
        monkeypatch.setattr(scd.models, "KVCache", CopyingCache)
        copying = generate(model, frames[:, :1], actions, steps=3, seed=1, window=3)
    torch.testing.assert_close(ring, copying, atol=2e-5, rtol=1e-4)


def test_ring_buffer_attends_the_latest_frames_and_writes_after_them():
    """Four slots: after 6 committed frames, a one-frame pass writes slot 6 % 4 = 2 and sees frames 3, 4, 5 (slots
    3, 0, 1); a two-frame pass writes slots 2, 3 and sees frames 4, 5; a pass with two versions of the frame writes
    slot 2 and the spare slot 4."""
    cache = KVCache(layers=1, slots=4, tokens_per_frame=1, spare=1)
    cache.commit(6)
    one = cache.open(1)
    assert one.index.tolist() == [2] and one.frame_pos.tolist() == [6]
    assert one.mask(None).tolist() == [[True, True, True, True, False]]
    two = cache.open(2)
    assert two.index.tolist() == [2, 3] and two.frame_pos.tolist() == [6, 7]
    causal = torch.tensor([[True, False], [True, True]])
    assert two.mask(causal).tolist() == [[True, True, True, False, False], [True, True, True, True, False]]
    branches = cache.open(1, branches=2)
    assert branches.index.tolist() == [2, 4] and branches.frame_pos.tolist() == [6, 6]
    assert branches.mask(torch.eye(2, dtype=torch.bool)).tolist() == [[True, True, True, True, False],
                                                                      [True, True, False, True, True]]
    fresh = KVCache(layers=1, slots=4, tokens_per_frame=1)
    fresh.commit(1)
    assert fresh.open(1).mask(None).tolist() == [[True, True, False, False]]


def test_rows_that_started_later_see_only_their_own_frames():
    """Row 0 started at frame 0, row 1 at frame 5 (its first position): after frame 5 a one-frame pass writes slot
    2 for both; row 0 sees frames 3, 4, 5 (slots 3, 0, 1), row 1 only frame 5 (slot 1); a two-frame pass, frames
    4, 5 and 5 alone."""
    old = KVCache(layers=1, slots=4, tokens_per_frame=1)
    new = KVCache(layers=1, slots=4, tokens_per_frame=1, first_frame=5)
    for cache, frames in ((old, 6), (new, 1)):
        cache.allocate(1, 1, 2, torch.float32, "cpu")
        cache.commit(frames)
    both = old.concat(new)
    assert both.start.tolist() == [0, 5] and both.position == 6
    one = both.open(1)
    assert one.index.tolist() == [2]
    assert one.mask(None).tolist() == [[[[True, True, True, True]]], [[[False, True, True, False]]]]
    causal = torch.tensor([[True, False], [True, True]])
    two = both.open(2).mask(causal)
    assert two[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert two[1, 0].tolist() == [[False, True, True, False], [False, True, True, True]]
    assert both.select(torch.tensor([1])).open(1).mask(None).tolist() == [[[[False, True, True, False]]]]
    with pytest.raises(ValueError, match="at frame 6 and .* at frame 1"):
        old.concat(KVCache(layers=1, slots=4, tokens_per_frame=1, first_frame=1))


JOIN_OPTIONS = [  # (arch, config changes, guidance): every encoder input, change prediction, a null-action branch
    ("causal_dit", {}, None),
    ("causal_dit", dict(prediction="change"), Guidance(2.0, null_action=True)),
    ("scd", {}, None),
    ("scd", dict(prediction="change"), Guidance(2.0, null_action=True)),
    ("scd", dict(encoder_input="noisy_current"), None),
]


@pytest.mark.parametrize("arch, changes, guidance", JOIN_OPTIONS)
@pytest.mark.parametrize("lead", [0, 5])
def test_a_video_that_joins_and_outlives_a_batch_renders_as_it_would_alone(arch, changes, guidance, lead):
    """Video A streams `lead` frames alone, then video B joins with 3 context frames (lead 0: at frame 1, so B's
    context sits at frame positions -2..0), both stream 6 frames in one batch past the window of 3, then A leaves
    and B streams 3 more. Temperature 0 takes the noise out, so each must equal its solo rollout."""
    model = tiny(arch, **changes)
    frames, actions = clip(b=2, f=14)
    kw = dict(steps=2, window=3, guidance=guidance, temperature=0.0)

    def alone(video, c0, n):
        streamer = Streamer(model, frames[video, None, :c0], actions[video, None, :c0], **kw)
        return torch.cat([streamer.step(actions[video, None, c0 + i]) for i in range(n)], dim=1)

    shared = Streamer(model, frames[:1, :1], actions[:1, :1], **kw)
    a = [shared.step(actions[:1, 1 + i]) for i in range(lead)]
    assert shared.join(frames[1:, :3], actions[1:, :3]) == range(1, 2)
    b = []
    for i in range(6):
        both = shared.step(torch.stack([actions[0, 1 + lead + i], actions[1, 3 + i]]))
        a.append(both[:1])
        b.append(both[1:])
    shared.leave([0])
    b += [shared.step(actions[1:, 9 + i]) for i in range(3)]
    assert shared.batch == 1
    torch.testing.assert_close(torch.cat(a, dim=1), alone(0, 1, lead + 6), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(b, dim=1), alone(1, 3, 9), atol=2e-5, rtol=1e-4)


TEACHER_OPTIONS = [("causal_dit", {}, None), ("causal_dit", dict(prediction="change"), Guidance(2.0, null_action=True)),
                   ("scd", dict(prediction="change"), None), ("scd", dict(encoder_input="noisy_current"), None)]


@pytest.mark.parametrize("arch, changes, guidance", TEACHER_OPTIONS)
def test_teacher_forced_frames_equal_rollouts_from_the_recorded_history(arch, changes, guidance):
    """With observed frames every generated frame i is rendered from the recorded frames before it: it equals the
    first frame of a fresh rollout whose context is all those frames (no window: a frame's cached keys depend on
    the frames it saw). Temperature 0 takes the noise out."""
    model = tiny(arch, **changes)
    frames, actions = clip(b=2, f=8)
    kw = dict(steps=2, guidance=guidance, temperature=0.0)
    forced = generate(model, frames[:, :2], actions, observed=frames[:, 2:], **kw)  # (B, 1, 6, C, H, W)
    for i in range(6):
        fresh = Streamer(model, frames[:, : 2 + i], actions[:, : 2 + i], **kw).step(actions[:, 2 + i])
        torch.testing.assert_close(forced[:, :, i], fresh, atol=2e-5, rtol=1e-4)
    free = generate(model, frames[:, :2], actions, **kw)
    torch.testing.assert_close(free[:, :, 0], forced[:, :, 0])  # the first frame has only recorded history
    assert (free[:, :, 1:] - forced[:, :, 1:]).abs().amax() > 1e-3  # afterwards the histories differ


def test_observed_frames_are_checked():
    model = tiny("scd")
    frames, actions = clip(b=2, f=6)
    with pytest.raises(ValueError, match="observed must hold the 3 recorded frames after the context"):
        generate(model, frames[:, :3], actions, observed=frames[:, 3:5], steps=1)
    with pytest.raises(ValueError, match="observed must have shape"):
        generate(model, frames[:, :3], actions, observed=frames[:, 3:, :1], steps=1)
    streamer = Streamer(model, frames[:, :2], actions[:, :2], steps=1)
    with pytest.raises(ValueError, match="observed must hold one frame per video \\(2\\), got 1"):
        streamer.step(actions[:, 2], observed=frames[:1, 2])


def test_joining_and_leaving_check_their_input():
    model = tiny("scd")
    frames, actions = clip(b=2, f=6)
    shared = Streamer(model, frames[:1, :2], actions[:1, :2], steps=1, window=3, num_samples=2)
    with pytest.raises(ValueError, match="needs 1 to 3 \\(the window\\) context frames, got 4"):
        shared.join(frames[:, :4], actions[:, :4])
    with pytest.raises(ValueError, match="needs 1 to 3"):
        shared.join(frames[:, :0], actions[:, :0])
    with pytest.raises(ValueError, match="actions"):
        shared.join(frames[:, :2], actions[:1, :2])
    assert shared.join(frames[:, :2], actions[:, :2]) == range(1, 3)
    assert shared.step(1).shape == (3, 2, *FRAME) and shared.stream.batch == 6  # 3 videos x 2 samples
    with pytest.raises(ValueError, match="indices in 0..2, got \\[3\\]"):
        shared.leave([3])
    with pytest.raises(ValueError, match="every video would leave"):
        shared.leave([0, 1, 2])
    anchors = shared.stream.anchor.clone()  # (6, C, H, W): rows 2 and 3 are video 1's samples
    shared.leave([1])
    torch.testing.assert_close(shared.stream.anchor, anchors[[0, 1, 4, 5]], rtol=0, atol=0)
    assert shared.step(torch.tensor([1, 2])).shape == (2, 2, *FRAME)


@pytest.mark.parametrize("arch, changes", [("causal_dit", {}), ("scd", {}),
                                           ("scd", dict(encoder_input="noisy_current"))])
@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_prefill_equals_one_dense_pass(arch, changes, chunk, monkeypatch):
    model = tiny(arch, **changes)
    frames, actions = clip(f=10)
    kw = dict(steps=2, seed=0, window=8)
    monkeypatch.setattr(scd.nn, "PREFILL_CHUNK", 100)
    dense = generate(model, frames[:, :7], actions, **kw)
    monkeypatch.setattr(scd.nn, "PREFILL_CHUNK", chunk)
    chunked = generate(model, frames[:, :7], actions, **kw)
    torch.testing.assert_close(chunked, dense, atol=2e-5, rtol=1e-4)


def sequential_guided_rollout(model, context, actions, guidance, steps, seed, window):
    """The guided rollout with one pass per branch (the Streamer before batched branches): the null action's
    context first, then the frame's own, whose slot commit keeps; two velocity passes per step."""
    gen, guidance_gen = _generator(seed), _generator(seed, GUIDANCE_NOISE)
    stream = model.new_stream(context.shape[0], window)
    stream.history_generator = _generator(seed, HISTORY_NOISE)
    null = torch.full(actions.shape[:1], model.null_action)
    schedule = flow_schedule(steps)
    out = []
    with torch.no_grad():
        model.prefill(stream, context, actions[:, : context.shape[1]])
        for i in range(context.shape[1], actions.shape[1]):
            a = actions[:, i]
            noise = torch.randn((a.shape[0], *FRAME), generator=gen)
            neg_action, neg_ctx = a, None
            if guidance.null_action:
                neg_action, neg_ctx = null, model.frame_context(stream, null, noise)
            ctx = model.frame_context(stream, a, noise)
            if guidance.context_noise > 0:
                zeta = torch.randn(ctx.shape, generator=guidance_gen)
                neg_ctx = model.corrupt_context(ctx if neg_ctx is None else neg_ctx, guidance.context_noise, zeta)

            def velocity(x, t):
                v = model.frame_velocity(stream, ctx, x, t, a)
                v_neg = model.frame_velocity(stream, neg_ctx, x, t, neg_action)
                return v_neg + guidance.scale * (v - v_neg)

            frame = model.prediction.to_frame(euler_sample(velocity, noise, schedule), stream.anchor)
            if model.config.frame_range is not None:
                frame = frame.clamp(*model.config.frame_range)
            model.commit(stream, frame, a)
            out.append(frame)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("arch, changes, guidance", [o for o in OPTIONS if o[2] is not None])
@pytest.mark.parametrize("window", [3, 8])
def test_batched_guidance_equals_one_pass_per_branch(arch, changes, guidance, window):
    model = tiny(arch, **changes)
    frames, actions = clip(f=7)
    batched = generate(model, frames[:, :2], actions, steps=2, seed=4, guidance=guidance, window=window)[:, 0]
    sequential = sequential_guided_rollout(model, frames[:, :2], actions, guidance, 2, 4, window)
    torch.testing.assert_close(batched, sequential, atol=2e-5, rtol=1e-4)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("arch, changes, guidance", OPTIONS)
def test_traced_step_equals_eager_with_one_graph_for_every_frame_and_streamer(arch, changes, guidance, monkeypatch):
    """The compiled step traced without code generation (dynamo + AOT functionalization of the in-place cache
    writes): the same frames as eager, past the window, and one graph that later frames and a new Streamer reuse."""
    import scd.sampling

    torch._dynamo.reset()
    monkeypatch.setattr(scd.sampling, "compiled_render_frame",
                        lambda device: torch.compile(scd.sampling.render_frame, backend="aot_eager", dynamic=False))
    model = tiny(arch, **changes)
    frames, actions = clip(f=6)
    kw = dict(steps=2, num_samples=2, window=2, guidance=guidance)
    before = _graphs()
    traced = generate(model, frames[:, :2], actions, seed=5, compile=True, **kw)
    assert _graphs() == before + 1
    torch.testing.assert_close(traced, generate(model, frames[:, :2], actions, seed=5, **kw), atol=1e-5, rtol=1e-5)
    other = generate(model, frames[:, :1], actions, seed=6, compile=True, **kw)  # another Streamer, same graph
    assert _graphs() == before + 1
    torch.testing.assert_close(other, generate(model, frames[:, :1], actions, seed=6, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not torch._inductor.cpp_builder.get_cpp_compiler(), reason="inductor needs a C++ compiler")
def test_compiled_step_equals_eager():
    """torch.compile's default backend (C++ kernels on a CPU): about a minute the first time on 2 cores, seconds
    once inductor's cache holds the kernels."""
    torch._dynamo.reset()
    model = tiny("scd")
    frames, actions = clip(b=1, f=4)
    kw = dict(steps=2, window=2, guidance=Guidance(1.5, null_action=True, context_noise=0.2))
    compiled = generate(model, frames[:, :1], actions, seed=2, compile=True, **kw)
    torch.testing.assert_close(compiled, generate(model, frames[:, :1], actions, seed=2, **kw), atol=1e-5, rtol=1e-5)


@pytest.fixture
def traced_compile(monkeypatch):
    """Streamer(compile=True) with the traced step (no code generation); lists the devices it was built for."""
    import scd.sampling

    torch._dynamo.reset()
    built = []

    def traced(device):
        built.append(device)
        return torch.compile(scd.sampling.render_frame, backend="aot_eager", dynamic=False)

    monkeypatch.setattr(scd.sampling, "compiled_render_frame", traced)
    return built


def test_compiled_step_follows_videos_that_join_and_leave(traced_compile):
    model = tiny("scd", prediction="change")
    frames, actions = clip(b=3, f=8)

    def run(compile):
        streamer = Streamer(model, frames[:1, :2], actions[:1, :2], steps=2, window=2, seed=4, compile=compile)
        out = [streamer.step(actions[:1, 2])]
        streamer.join(frames[1:, :2], actions[1:, :2])
        out += [streamer.step(actions[:, 3 + i]) for i in range(2)]
        streamer.leave([0, 2])
        out += [streamer.step(actions[1:2, 5 + i]) for i in range(2)]
        return torch.cat([frame.flatten(0, 1) for frame in out])  # (1 + 3 + 3 + 1 + 1, C, H, W)

    torch.testing.assert_close(run(True), run(False), atol=1e-5, rtol=1e-5)


def test_generate_and_play_take_compile(traced_compile, tmp_path, capsys):
    import numpy as np

    from scd.checkpoint import save_checkpoint
    from scd.cli import main
    from scd.config import get_preset
    from scd.models import build_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "scd", build_model(get_preset("scd-tiny")))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "context.npz", frames=rng.integers(0, 256, (2, 6, 64, 64, 3), dtype=np.uint8),
             actions=rng.integers(0, 17, (2, 6)))
    argv = f"generate --checkpoint {ckpt} --data {tmp_path}/context.npz --context 2 --frames 2 --steps 1 --compile"
    assert main(f"{argv} --out {tmp_path}/v.mp4".split()) == 0
    assert traced_compile == ["cpu"]
    argv = f"play --benchmark 2 --scd {ckpt} --data {tmp_path}/context.npz --steps 1 --context 2 --window 3 --compile"
    assert main(argv.split()) == 0
    assert len(traced_compile) > 1 and "compile on" in capsys.readouterr().out
