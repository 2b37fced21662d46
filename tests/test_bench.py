"""`scd bench` on tiny presets: it runs, its numbers are sane, and its analytical FLOP count is exact. No timing
assertions (the machine is shared)."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scd.bench import bench, format_table, load_bench_model
from scd.checkpoint import save_checkpoint
from scd.cli import main
from scd.config import get_preset
from scd.models import build_model
from scd.sampling import Guidance, Streamer


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("preset, changes", [("dit-tiny", {}), ("scd-tiny", {}), ("scd-tiny", {"fusion": "channel"}),
                                             ("scd-tiny", {"fusion": "seq_same"}),
                                             ("scd-tiny", {"encoder_input": "noisy_current"})])
def test_analytical_flops_match_a_brute_force_count_of_one_streamed_frame(preset, changes, guided):
    config = get_preset(preset).replace(**changes)
    model = build_model(config).eval()
    batch, context, steps = 2, 3, 2
    frames = torch.rand(batch, context, *config.frame_shape) * 2 - 1
    actions = torch.randint(0, config.num_actions, (batch, context + 2))
    # The counted frame has a history of context + 1 frames; with this window they fill the KV cache, whose every
    # slot attention reads (static shapes).
    window = context + 2 - (model.cache_frames(1) - 1)
    guidance = Guidance(scale=1.5, null_action=True) if guided else None  # both branches in every pass
    streamer = Streamer(model, frames, actions[:, :context], steps=steps, window=window, guidance=guidance)
    streamer.step(actions[:, context])
    assert streamer.stream.cache.slots == context + 2
    # The math backend spells attention out as bmm, which the counter sees (it skips the fused CPU kernel).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        streamer.step(actions[:, context + 1])
    expected = model.frame_flops(steps, history=context + 1, batch=batch, branches=2 if guided else 1)["total"]
    assert counter.get_total_flops() == expected


def test_bench_interleaves_both_models_and_reports_sane_numbers(monkeypatch):
    import scd.sampling

    torch._dynamo.reset()  # the compiled rows: traced, without code generation (fast)
    monkeypatch.setattr(scd.sampling, "compiled_render_frame",
                        lambda device: torch.compile(scd.sampling.render_frame, backend="aot_eager", dynamic=False))
    models = [load_bench_model("scd-tiny"), load_bench_model("dit-tiny")]
    report = bench(models, [2, 4], steps=2, frames=2, repeats=2, warmup=1, memory=False, progress=False,
                   compile=True, profile_frames=1)
    assert [run["context"] for run in report["runs"]] == [2, 4] and report["matmul_peak_gflops"] > 0
    for run in report["runs"]:
        assert list(run["models"]) == ["scd-tiny", "dit-tiny", "scd-tiny+compile", "dit-tiny+compile"]
        for e in run["models"].values():
            assert len(e["frame_times"]) == 2 * 2 and len(e["first_frame_times"]) == 2
            assert e["s_per_frame"] > 0 and e["first_frame_s"] > 0 and e["fps"] == pytest.approx(1 / e["s_per_frame"])
            assert e["peak_share"] == pytest.approx(e["achieved_gflops"] / report["matmul_peak_gflops"])
            assert 0 <= e["python_share"] < 1 and e["ops_per_frame"] > 0
        scd, dit = run["models"]["scd-tiny"], run["models"]["dit-tiny"]
        assert run["models"]["scd-tiny+compile"]["compile"] and not scd["compile"]
        assert (scd["block_passes_per_frame"], dit["block_passes_per_frame"]) == (2 + 2 * 1, 3 * 2 + 3)
        r = run["ratio_dit_over_scd"]
        assert r["s_per_frame"] == pytest.approx(dit["s_per_frame"] / scd["s_per_frame"])
        assert r["expected_block_passes"] == pytest.approx(9 / 4)
        assert set(run["compile_speedup"]) == {"scd-tiny", "dit-tiny"} and "ratio_dit_over_scd_compiled" in run
        # Exact bytes of the ring buffers: 2 (K, V) x layers x batch x heads x slots x tokens x head_dim x fp32, where
        # the window is the context; the Causal DiT caches window + 1 frames (the past and the frame being made),
        # SCD window frames (its slot for the frame being made holds the previous frame).
        window = run["context"]
        assert scd["kv_cache_bytes"] == 2 * 2 * 1 * 4 * window * 64 * 16 * 4 < dit["kv_cache_bytes"]
        assert dit["kv_cache_bytes"] == 2 * 3 * 1 * 4 * (window + 1) * 64 * 16 * 4
        assert 1 < r["expected_flops"] and r["kv_cache_bytes"] == pytest.approx(3 * (window + 1) / (2 * window))
        # every frame sees a full cache: the FLOPs of a frame whose history fills it
        assert dit["flops_per_frame"] == models[1].model.frame_flops(2, window, 1)["total"]
    table = format_table(report)
    assert "DiT/SCD: s/frame" in table and "scd-tiny (scd)" in table and "random (preset initialisation)" in table
    assert "scd-tiny+compile (scd)" in table and "compile speed-up" in table


def test_bench_with_guidance_counts_both_branches(capsys):
    argv = ("bench --scd scd-tiny --dit dit-tiny --context 2 --steps 2 --frames 1 --repeats 1 --warmup 0 "
            "--profile-frames 0 --cfg 1.5 --json").split()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["guidance"] == 1.5
    models = {m["label"]: m for m in report["models"]}
    for label, e in report["runs"][0]["models"].items():
        model = load_bench_model(label).model
        assert e["flops_per_frame"] == model.frame_flops(2, model.cache_frames(2) - 1, 1, branches=2)["total"]
        assert e["flops_per_frame"] > model.frame_flops(2, model.cache_frames(2) - 1, 1)["total"]
        assert e["peak_memory_bytes"] > 0 and models[label]["block_passes_per_frame"] > 0


def test_bf16_effect_is_measured_against_fp32():
    from scd.bench import bf16_effect

    model = build_model(get_preset("scd-tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised heads would make every frame the same
            p.add_(0.05 * torch.randn_like(p))
    ctx = torch.rand(1, 2, *model.config.frame_shape) * 2 - 1
    actions = torch.randint(0, model.config.num_actions, (1, 4))
    effect = bf16_effect(model, ctx, actions, steps=2, seed=0)
    assert 10 < effect["bf16_psnr_db"] < 80 and 0 < effect["bf16_max_abs"] < 1


def test_bench_command_with_a_checkpoint_and_peak_memory(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "my-scd", build_model(get_preset("scd-tiny")))
    argv = f"bench --checkpoint {ckpt} --dit dit-tiny --context 2 --steps 1 --frames 1 --repeats 1 --warmup 0 --json"
    assert main(argv.split()) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["label"] for m in report["models"]] == ["my-scd", "dit-tiny"]
    assert report["models"][0]["weights"] == "checkpoint"
    run = report["runs"][0]
    for e in run["models"].values():
        assert e["peak_memory_bytes"] > e["kv_cache_bytes"] > 0 and "VmHWM" in e["peak_memory_measure"]
    assert run["ratio_dit_over_scd"]["peak_memory"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        ("--scd scd-giant", "'scd-giant' is neither a preset"),
        ("--scd dit-tiny --dit dit-tiny", "one scd and one causal_dit"),
        ("--context 0", "context lengths must be >= 1"),
        ("--frames 0", "frames must be >= 1"),
    ],
)
def test_bad_input_exits_with_a_message_that_names_the_problem(args, message, capsys):
    argv = f"bench --scd scd-tiny --dit dit-tiny --steps 1 --no-memory {args}".split()
    assert main(argv) == 2
    assert message in capsys.readouterr().err
