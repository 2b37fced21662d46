"""Causal DiT -> SCD conversion (supp. E.1) and the probe / quality / convert / surgery options of the CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scd.checkpoint import load_model, read_config
from scd.cli import main
from scd.config import ModelConfig
from scd.convert import convert_causal_dit
from scd.data.store import DatasetWriter
from scd.flow import interpolate
from scd.models import SCD, build_model

from helpers import perturb

FRAME = (3, 32, 32)


def tiny_dit(depth=6):
    cfg = ModelConfig("causal_dit", frame_shape=FRAME, patch_size=8, hidden=32, head_dim=16, num_actions=5,
                      depth=depth)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    perturb(model, 0.05)
    return model


def test_converted_blocks_and_embeddings_are_the_source_ones():
    dit = tiny_dit()
    scd = convert_causal_dit(dit, encoder_depth=4, decoder_prefix=1, decoder_suffix=2)
    assert isinstance(scd, SCD)
    cfg = scd.config
    assert (cfg.encoder_depth, cfg.decoder_depth, cfg.encoder_input) == (4, 3, "noisy_current")
    assert (cfg.hidden, cfg.frame_shape, cfg.num_actions) == (32, FRAME, 5)

    def same(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    assert all(same(scd.encoder.blocks[i], dit.blocks[i]) for i in range(4))
    assert [same(scd.decoder.blocks[j], dit.blocks[i]) for j, i in enumerate([0, 4, 5])] == [True] * 3
    for half in (scd.encoder, scd.decoder):
        assert same(half.embed, dit.embed) and same(half.cond, dit.cond)
    assert same(scd.decoder.head, dit.head)
    with torch.no_grad():  # copies, not shared modules
        scd.encoder.blocks[0].mlp[0].weight.add_(1.0)
    assert not same(scd.encoder.blocks[0], dit.blocks[0])


def test_noisy_current_encoder_sees_exactly_what_the_causal_dit_saw():
    """c_i = LayerNorm(output of block l of the Causal DiT at the noisy frame i), for any encoder noise level."""
    dit = tiny_dit()
    scd = convert_causal_dit(dit, encoder_depth=3, decoder_prefix=1, decoder_suffix=1)
    g = torch.Generator().manual_seed(0)
    frames, actions = torch.rand(2, 4, *FRAME, generator=g) * 2 - 1, torch.randint(0, 5, (2, 4), generator=g)
    t_enc = 0.8 + 0.2 * torch.rand(2, 4, generator=g)
    x_enc = interpolate(frames, torch.randn(frames.shape, generator=g), t_enc)
    seen = {}
    handle = dit.blocks[2].register_forward_hook(lambda m, args, out: seen.update(h=out))
    with torch.no_grad():
        dit.velocity(x_enc, t_enc, dit.training_context(frames, actions), actions)
        c = scd.encoder_input.encode(scd, frames, actions, torch.zeros(2, 4), x_enc, t_enc)
    handle.remove()
    expected = F.layer_norm(seen["h"][:, 3:], (32,), eps=1e-6)  # the F noisy groups of [clean 0..2 ; noisy 0..3]
    torch.testing.assert_close(c, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass x, the clean frames"):
        scd.encode(frames, actions)


def test_previous_frame_conversion_and_bad_splits():
    dit = tiny_dit(depth=4)
    scd = convert_causal_dit(dit, 2, 1, 1, encoder_input="previous_frame", fusion="channel")
    assert scd.config.encoder_input == "previous_frame" and scd.config.fusion == "channel"
    with pytest.raises(ValueError, match="--encoder-depth must be in \\[1, 4\\]"):
        convert_causal_dit(dit, 5, 1, 1)
    with pytest.raises(ValueError, match="at least one block"):
        convert_causal_dit(dit, 2, 0, 0)
    with pytest.raises(ValueError, match="needs a Causal DiT"):
        convert_causal_dit(scd, 2, 1, 1)


# -- the commands, end to end on a tiny data set ----------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 episodes of 14 frames: a square that the action moves (32x32 RGB, 5 actions)."""
    path = tmp_path_factory.mktemp("data") / "squares"
    writer = DatasetWriter(path, (32, 32, 3))
    rng = np.random.default_rng(0)
    for e in range(3):
        r, c = 8, 8 + 4 * e
        frames, actions = [], rng.integers(0, 5, 14)
        for a in actions:
            r, c = (r + (a == 1) - (a == 2)) % 24, (c + (a == 3) - (a == 4)) % 24
            frame = np.full((32, 32, 3), 20, np.uint8)
            frame[r : r + 8, c : c + 8] = (200, 80 + 40 * e, 40)
            frames.append(frame)
        writer.add_episode(np.stack(frames), actions, seed=e)
    writer.finish(source="squares", num_actions=5, action_names=[f"a{i}" for i in range(5)], fps=10)
    return path


def test_convert_then_fine_tune_probe_and_score_from_the_command_line(data, tmp_path, capsys):
    dit, conv, tuned = tmp_path / "dit", tmp_path / "conv", tmp_path / "tuned"
    common = f"--data {data} --batch 2 --clip-len 4 --steps 2 --log-every 1"
    assert main(f"train --preset dit-tiny --out {dit} {common} --skip-after-step 1 --keep-prefix 1 --keep-suffix 1 "
                f"--diagonal-last 1 --skip-steps 4".split()) == 0
    assert read_config(dit)["train"]["surgery"]["diagonal_last"] == 1
    assert main(f"convert --checkpoint {dit} --out {conv} --encoder-depth 2 --decoder-prefix 1 "
                f"--decoder-suffix 1".split()) == 0
    assert "scd train --init-from" in capsys.readouterr().out
    converted = load_model(conv)
    assert converted.config.encoder_input == "noisy_current" and converted.config.decoder_depth == 2
    assert main(["info", str(conv), "--steps", "20"]) == 0
    assert "44 = 2x2 + 20x2" in capsys.readouterr().out  # a clean caching pass and a pure-noise pass per frame
    assert main(f"train --init-from {conv} --out {tuned} {common} --encoder-t-min 0.7".split()) == 0
    saved = read_config(tuned)
    assert saved["model"]["encoder_input"] == "noisy_current" and saved["train"]["flow"]["encoder_t_min"] == 0.7
    assert saved["step"] == 2

    out = tmp_path / "probe"
    assert main(f"probe --checkpoint {dit} --data {data} --out {out} --clips 2 --context 2 --frames 2 --steps 3 "
                f"--loss-clips 3 --loss-draws 1".split()) == 0
    result = json.loads((out / "probe.json").read_text())
    assert len(result["mean_offdiag_cosine"]) == len(result["attention_mass"]) == 3  # dit-tiny: 3 blocks
    assert len(result["leave_one_out"]["delta_loss"]) == 3
    assert all((out / name).exists() for name in ["similarity.png", "depth.png", "pca.png", "leave_one_out.png"])

    capsys.readouterr()
    for ckpt, surgery in [(dit, "--skip-after-step 1 --keep-prefix 1 --keep-suffix 1"), (tuned, "")]:
        assert main(f"quality --checkpoint {ckpt} --data {data} --clips 2 --context 2 --frames 2 --steps 2 "
                    f"--json {tmp_path / 'q.json'} {surgery}".split()) == 0
        q = json.loads((tmp_path / "q.json").read_text())
        assert q["psnr"] > 0 and 0 <= q["lpips"] and q["seconds_per_frame"] > 0
    assert "PSNR" in capsys.readouterr().out
    assert main(f"generate --checkpoint {dit} --context 2 --frames 2 --steps 2 --diagonal-last 2 "
                f"--out {tmp_path / 'v.gif'}".split()) == 0

    # surgeries are for a Causal DiT; the message names the problem
    assert main(f"quality --checkpoint {tuned} --data {data} --clips 1 --context 2 --frames 1 --steps 2 "
                f"--diagonal-last 1".split()) == 2
    assert "SCD takes none" in capsys.readouterr().err
    assert main(f"convert --checkpoint {tuned} --out {tmp_path / 'x'} --encoder-depth 1 --decoder-prefix 1 "
                f"--decoder-suffix 0".split()) == 2
    assert "needs a Causal DiT" in capsys.readouterr().err
