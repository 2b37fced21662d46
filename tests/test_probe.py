"""Probing through hooks and the surgeries, on tiny configs: the probes never change a rollout, their numbers have
the properties they must have, and every surgery agrees between training (one pass) and streaming (KV cache)."""

import math

import pytest
import torch

from scd.config import ModelConfig
from scd.flow import FlowConfig, flow_matching_loss, interpolate
from scd.models import build_model
from scd.nn import KVCache, apply_rope
from scd.probe import RolloutProbe, context_attention_mass, leave_one_out, pca_images, skipping
from scd.sampling import Guidance, flow_schedule, generate
from scd.surgery import Surgery, operated
from scd.train import TrainConfig, Trainer

from helpers import perturb

FRAME = (3, 32, 32)
STEPS = 4


def tiny(arch: str, depth: int = 4, **kw):
    blocks = dict(depth=depth) if arch == "causal_dit" else dict(encoder_depth=2, decoder_depth=2)
    kw = dict(frame_range=None) | kw  # the test frames are Gaussian, not pixels in [-1, 1]
    cfg = ModelConfig(arch, frame_shape=FRAME, patch_size=8, hidden=32, head_dim=16, num_actions=5, **blocks, **kw)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    perturb(model, 0.05)
    return model


def clip(b=2, f=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, *FRAME, generator=g) * 2 - 1, torch.randint(0, 5, (b, f), generator=g)


def probed(model, surgery=None, c0=2, f=5):
    frames, actions = clip(f=f)
    with RolloutProbe(model) as probe, operated(model, surgery):
        video = generate(model, frames[:, :c0], actions, steps=STEPS, seed=3, callback=probe.callback)
    return probe, video


@pytest.mark.parametrize("arch", ["causal_dit", "scd"])
def test_rollout_with_probes_attached_equals_rollout_without(arch):
    model = tiny(arch)
    frames, actions = clip()
    plain = generate(model, frames[:, :2], actions, steps=STEPS, seed=3)
    probe, with_probes = probed(model)
    assert torch.equal(plain, with_probes)
    assert probe.frames_seen == 3
    again = generate(model, frames[:, :2], actions, steps=STEPS, seed=3)  # hooks are gone afterwards
    assert torch.equal(plain, again)


def test_a_guided_rollout_is_refused():
    model = tiny("causal_dit")
    frames, actions = clip()
    with pytest.raises(ValueError, match="one velocity pass of one branch per denoising step"), \
            RolloutProbe(model) as probe:
        generate(model, frames[:, :2], actions, steps=2, guidance=Guidance(2.0, null_action=True),
                 callback=probe.callback)


@pytest.mark.parametrize("arch", ["causal_dit", "scd"])
def test_similarity_matrices_are_symmetric_with_unit_diagonal(arch):
    probe, _ = probed(tiny(arch))
    result = probe.result()
    cos, mse = torch.tensor(result["cosine"]), torch.tensor(result["mse"])
    depth = len(probe.model.denoising_stack().blocks)
    assert cos.shape == mse.shape == (depth, STEPS, STEPS)
    torch.testing.assert_close(cos, cos.transpose(1, 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(mse, mse.transpose(1, 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(cos.diagonal(dim1=1, dim2=2), torch.ones(depth, STEPS, dtype=cos.dtype))
    assert mse.diagonal(dim1=1, dim2=2).abs().max() < 1e-9 and (mse >= 0).all()
    assert (cos <= 1 + 1e-9).all() and len(result["mean_offdiag_cosine"]) == depth


def test_attention_mass_is_a_share_and_vanishes_under_a_frame_diagonal_mask():
    model = tiny("causal_dit")
    mass = probed(model)[0].result()["attention_mass"]
    assert all(0 < m < 1 for m in mass)
    cut = probed(model, Surgery(diagonal_last=2))[0].result()["attention_mass"]
    assert cut[2:] == [0.0, 0.0] and all(m > 0 for m in cut[:2])
    assert all(0 <= m <= 1 for m in probed(tiny("scd"))[0].result()["attention_mass"])  # mass on c_i


def test_attention_mass_recomputation_matches_the_fast_path():
    """The probe's explicit softmax(q k^T) reproduces what scaled_dot_product_attention computed."""
    model = tiny("causal_dit")
    attn = model.blocks[1].attn
    x = torch.randn(2, 32, 32)
    rope = model.rope(torch.tensor([0, 1]))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[:16, 16:] = False  # frame 0 sees itself; frame 1 sees frames 0 and 1
    mass, uniform = context_attention_mass(attn, x, rope, mask, tokens=16)
    assert uniform == 0.5 and ((mass > 0) & (mass < 1)).all()
    # Against attention with values = one-hot "is another frame's key": the output is exactly the mass.
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).view(b, n, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(attn.q_norm(q), rope), apply_rope(attn.k_norm(k), rope)
    marker = torch.zeros(b, attn.heads, n, 1)
    marker[:, :, :16] = 1.0
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, marker, attn_mask=mask)
    torch.testing.assert_close(mass, sdpa[:, :, 16:, 0].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    # Streamed: frame 0 in the KV cache's ring (one empty slot), frame 1 the new frame of a cache pass.
    cache = KVCache(layers=3, slots=3, tokens_per_frame=16)
    first = cache.open(1)
    attn(x[:, :16], model.rope(torch.tensor([0])), first.mask(None), first, layer=1)
    cache.commit(1)
    second = cache.open(1)
    streamed, uniform = context_attention_mass(attn, x[:, 16:], model.rope(torch.tensor([1])), second.mask(None),
                                               second, layer=1, tokens=16)
    assert uniform == 0.5
    torch.testing.assert_close(streamed, mass, atol=1e-5, rtol=1e-5)


def test_pca_images_are_rgb_tiles_per_step():
    feats = torch.randn(3, 16, 8)
    feats[1] = math.nan  # a step a surgery skipped comes out grey
    tiles = pca_images(feats, (4, 4))
    assert tiles.shape == (3, 4, 4, 3) and tiles.min() >= 0 and tiles.max() <= 1
    assert (tiles[1] == 0.5).all()


@pytest.mark.parametrize("arch", ["causal_dit", "scd"])
def test_leave_one_out_gives_one_number_per_block(arch):
    model = tiny(arch)
    frames, actions = clip(b=2, f=4)
    loo = leave_one_out(model, (frames, actions), (frames, actions), context=2, steps=2, loss_draws=1)
    n = 4 if arch == "causal_dit" else 2 + 2
    for key in ("loss", "psnr", "ssim", "lpips"):
        assert len(loo[key]) == len(loo[f"delta_{key}"]) == n == len(loo["blocks"])
    assert any(abs(d) > 0 for d in loo["delta_loss"])
    base = leave_one_out(model, (frames, actions), (frames, actions), context=2, steps=2, loss_draws=1)["base"]
    assert base == loo["base"]  # fixed seed: the same numbers every time, the skip hooks leave nothing behind


def test_skipping_a_block_makes_it_the_identity():
    model = tiny("causal_dit")
    block = model.blocks[1]
    x, cond = torch.randn(1, 1, 16, 32), torch.randn(1, 1, 32)
    rope = model.rope(torch.tensor([0]))
    with skipping(block):
        assert torch.equal(block(x, cond, rope), x)
    assert not torch.equal(block(x, cond, rope), x)


# -- surgeries -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("surgery", [
    Surgery.skip_after(STEPS, STEPS, keep_prefix=1, keep_suffix=1),  # the skip starts after the last step
    Surgery.skip_after(0, STEPS, keep_prefix=2, keep_suffix=2),  # every step keeps all 4 blocks
])
def test_a_skip_schedule_that_skips_nothing_reproduces_the_rollout_exactly(surgery):
    model = tiny("causal_dit")
    frames, actions = clip()
    plain = generate(model, frames[:, :2], actions, steps=STEPS, seed=3)
    with operated(model, surgery):
        assert torch.equal(generate(model, frames[:, :2], actions, steps=STEPS, seed=3), plain)


def test_skipped_steps_do_not_run_the_middle_blocks():
    model = tiny("causal_dit")
    calls = [0] * 4
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(model.blocks)]
    frames, actions = clip(b=1, f=3)
    with operated(model, Surgery.skip_after(1, STEPS, keep_prefix=1, keep_suffix=1)):
        generate(model, frames[:, :2], actions, steps=STEPS)
    for h in handles:
        h.remove()
    # prefill + commit = 2 clean passes run everything; of the 4 steps only the first runs blocks 1 and 2
    assert calls == [2 + 4, 2 + 1, 2 + 1, 2 + 4]
    probe, _ = probed(model, Surgery.skip_after(2, STEPS, keep_prefix=1, keep_suffix=1))
    cos = torch.tensor(probe.result()["cosine"])
    assert torch.isnan(cos[1, 3, 3]) and not torch.isnan(cos[0]).any()  # skipped: no features at step 3


def uncached_rollout(model, context, actions, surgery):
    """Every denoising step reruns the teacher-forcing pass over the whole history (the training path)."""
    gen = torch.Generator().manual_seed(5)
    schedule = flow_schedule(STEPS)
    frames, out = context.clone(), []
    b = context.shape[0]
    for i in range(context.shape[1], actions.shape[1]):
        x = torch.randn((b, *FRAME), generator=gen)
        for s in range(STEPS):
            seq = torch.cat([frames, x[:, None]], dim=1)
            t_seq = torch.zeros(b, i + 1)
            t_seq[:, i] = schedule[s]
            with operated(model, surgery):
                v = model.velocity(seq, t_seq, model.training_context(seq, actions[:, : i + 1]), actions[:, : i + 1])[:, i]
            x = x + (schedule[s + 1] - schedule[s]) * v
        frames = torch.cat([frames, x[:, None]], dim=1)
        out.append(x)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("surgery", [
    Surgery.skip_after(2, STEPS, keep_prefix=1, keep_suffix=1),
    Surgery(diagonal_last=2),
    Surgery.skip_after(1, STEPS, keep_prefix=1, keep_suffix=2, diagonal_last=1),
])
def test_surgeries_stream_exactly_as_they_train(surgery):
    model = tiny("causal_dit")
    frames, actions = clip(f=5)
    with operated(model, surgery):
        cached = generate(model, frames[:, :2], actions, steps=STEPS, seed=5)[:, 0]
    with torch.no_grad():
        reference = uncached_rollout(model, frames[:, :2], actions, surgery)
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(cached, generate(model, frames[:, :2], actions, steps=STEPS, seed=5)[:, 0])


def test_frame_diagonal_blocks_cut_the_past():
    model = tiny("causal_dit")
    frames, actions = clip(f=4)
    x_t = interpolate(frames, torch.randn_like(frames), torch.full((2, 4), 0.5))
    t = torch.full((2, 4), 0.5)
    changed = frames.clone()
    changed[:, :3] = -changed[:, :3]
    def velocity(surgery, history):
        with operated(model, surgery):
            return model.velocity(x_t, t, model.training_context(history, actions), actions)[:, 3]

    everything = Surgery(diagonal_last=4)  # no block reads another frame: the history cannot matter
    torch.testing.assert_close(velocity(everything, changed), velocity(everything, frames))
    last_two = Surgery(diagonal_last=2)
    assert not torch.allclose(velocity(last_two, changed), velocity(last_two, frames))
    assert model.surgery is None  # operated puts the model back as it was


def test_surgeries_train_through_the_loss_and_the_trainer(tmp_path):
    model = tiny("causal_dit").train()
    frames, actions = clip(f=4)
    surgery = Surgery.skip_after(1, 10, keep_prefix=1, keep_suffix=1, diagonal_last=1)
    with operated(model, surgery):
        loss = flow_matching_loss(model, frames, actions, FlowConfig(K=2))
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0

    data = [clip(b=1, f=4, seed=s) for s in range(4)]
    data = [(f[0], a[0]) for f, a in data]
    cfg = TrainConfig(steps=2, batch=2, clip_len=4, ckpt_every=2, log_every=1, surgery=surgery)
    trainer = Trainer(tiny("causal_dit"), data, tmp_path, cfg)
    assert len(trainer.run(progress=False)) == 2
    assert TrainConfig(**cfg.to_dict()).surgery == surgery  # survives the checkpoint's JSON

    with pytest.raises(ValueError, match="SCD takes none"), operated(tiny("scd"), surgery):
        pass
    with pytest.raises(ValueError, match="keeps 3 \\+ 2 blocks of a 4-block model"):
        Trainer(tiny("causal_dit"), data, tmp_path, TrainConfig(steps=1, batch=2, clip_len=4,
                surgery=Surgery(0.5, keep_prefix=3, keep_suffix=2)))
    with pytest.raises(ValueError, match="need a skip time"):
        Surgery(keep_prefix=2)


@pytest.mark.parametrize("args, message", [
    ("probe --clips 0", "argument --clips: must be >= 1, got 0"),
    ("probe --episodes 0-99", "episodes 2..99 out of range"),
    ("probe --episodes 5-3", "expected indices like 0-7"),
    ("probe --frames 4 --pca-frame 99", "--pca-frame 99 is not a generated frame"),
    ("quality --clips 0", "argument --clips: must be >= 1, got 0"),
    ("quality --episodes 0-99 --no-speed", "episodes 2..99 out of range"),
])
def test_probe_and_quality_reject_bad_options_in_one_line(args, message, tmp_path_factory, capsys):
    from scd.checkpoint import save_checkpoint
    from scd.cli import main
    from scd.config import get_preset
    from scd.data.record import record

    root = tmp_path_factory.getbasetemp() / "probe-cli"
    if not (root / "data" / "meta.json").exists():
        record("crafter", root / "data", episodes=2, steps=16, seed=0, progress=False)
        save_checkpoint(root / "ckpt", build_model(get_preset("scd-tiny")))
    argv = f"{args} --checkpoint {root / 'ckpt'} --data {root / 'data'}".split()
    if argv[0] == "probe":
        argv += ["--out", str(tmp_path_factory.mktemp("probe-out"))]
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
