"""End to end through the `scd` command on a small real Crafter recording."""

import csv

import imageio.v2 as imageio
import pytest

from scd.cli import main
from scd.data.record import record


@pytest.fixture(scope="module")
def crafter(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "crafter"
    record("crafter", path, episodes=2, steps=80, seed=3, progress=False)
    return path


@pytest.fixture(scope="module")
def trained(crafter, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "scd"
    args = f"train --preset scd-tiny --data {crafter} --out {out} --steps 40 --batch 4 --clip-len 4 --lr 2e-3 " \
           f"--warmup 5 --ckpt-every 20 --log-every 1 --K 2 --eta 0.05"
    assert main(args.split()) == 0
    return out


def losses(run):
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_short_training_run_lowers_the_loss_on_real_crafter_frames(trained):
    values = losses(trained)
    assert len(values) == 40
    first, last = sum(values[:5]) / 5, sum(values[-10:]) / 10
    assert last < 0.8 * first, (first, last)  # measured: 1.53 -> 1.09
    assert (trained / "loss.png").exists() and (trained / "latest").exists()


def test_generate_writes_ground_truth_beside_prediction(trained, tmp_path, capfd):
    out = tmp_path / "video.mp4"
    args = f"generate --checkpoint {trained} --context 3 --frames 4 --steps 2 --samples 2 --out {out}"
    assert main(args.split()) == 0
    printed, err = capfd.readouterr()
    assert "per frame" in printed and "first frame" in printed
    video = imageio.mimread(out)
    assert len(video) == 3 + 4
    h, w = video[0].shape[:2]
    assert (h, w) == (14 + 4 * 64 + 14, 3 * 4 * 64 + 2 * 4)  # label + 4x frames + caption; truth + two samples
    blue, red = video[2][-7, w - 2].astype(int), video[3][-7, w - 2].astype(int)  # caption strips' right edge
    assert blue[2] > blue[0] + 60 and red[0] > red[2] + 60  # context frames are marked apart from generated ones
    assert "4/4" in err and "frame" in err  # the per-frame progress bar
    assert "pix_fmt" not in err
    gif = tmp_path / "video.gif"
    assert main(f"generate --checkpoint {trained} --context 2 --frames 3 --steps 1 --actions 1,2 --out {gif}".split()) == 0
    assert len(imageio.mimread(gif)) == 5


def test_info_prints_parameters_and_block_passes(capsys):
    assert main(["info", "scd-s", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "46 = 6 + 20x2" in out and "10.0M" in out
    assert main(["info", "dit-b"]) == 0
    assert "612 = 12x50 + 12" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        ("train --preset scd-tiny --data /nonexistent/data --out {tmp}/r --steps 1", "/nonexistent/data"),
        ("train --preset scd-giant --data {data} --out {tmp}/r --steps 1", "unknown preset 'scd-giant'"),
        ("train --preset scd-tiny --data {data} --out {tmp}/r --steps 1 --clip-len 500", "clip_len=500"),
        ("generate --checkpoint {tmp}/missing --out {tmp}/v.mp4", "checkpoint not found"),
        ("generate --checkpoint {run} --context 3 --actions 1,99 --frames 2 --out {tmp}/v.mp4", "unknown action id 99"),
        ("generate --checkpoint {run} --context 3 --actions jump --frames 2 --out {tmp}/v.mp4", "unknown action 'jump'"),
        ("generate --checkpoint {run} --context 3 --frames 2 --out {tmp}/v.avi", "unsupported video format"),
        ("generate --checkpoint {run} --context 3 --start 70 --frames 20 --out {tmp}/v.mp4", "do not fit"),
        ("generate --checkpoint {run} --frames 2 --out {tmp}/v.mp4", "--context 4 exceeds the history window of 3"),
        ("generate --frames -3", "argument --frames: must be >= 1, got -3"),
        ("generate --start -5", "argument --start: must be >= 0, got -5"),
        ("generate --window 0", "argument --window: must be >= 1, got 0"),
        ("generate --fps 0", "argument --fps: must be >= 1, got 0"),
        ("generate --scale 0", "argument --scale: must be >= 1, got 0"),
        ("generate --shift 0", "argument --shift: must be > 0, got 0"),
        ("generate --samples 0", "argument --samples: must be >= 1, got 0"),
        ("generate --steps 2.5", "argument --steps: expected an integer, got '2.5'"),
        ("generate --device foo", "unknown device 'foo'"),
        ("generate --device cuda:7", "cuda:7"),
        ("info --steps 0", "argument --steps: must be >= 1, got 0"),
        ("info --steps -5 all", "argument --steps: must be >= 1, got -5"),
        ("info DiT-Giant", "unknown preset or checkpoint 'DiT-Giant': presets are"),
        ("train --preset scd-tiny --data {data} --out {tmp}/file.txt --steps 1", "is a file, not a directory"),
        ("train --preset scd-tiny --data {data} --out {tmp}/r --steps 3 --clip-len 4 --lr 1e30 --warmup 0",
         "lower the learning rate"),
        ("train --preset scd-tiny --data {data} --out {tmp}/r --lr nan", "argument --lr: expected a finite number"),
        ("generate --checkpoint {tmp}/edited --out {tmp}/v.mp4", "model config hidden must be int, got '64'"),
        ("generate --checkpoint {tmp}/tampered --out {tmp}/v.mp4", "corrupt or truncated"),
        ("train --preset scd-tiny --data {data} --out {tmp}/r2 --init-from {run} --steps 1", ""),
    ],
)
def test_bad_input_exits_with_one_line_that_names_the_problem(args, message, crafter, trained, tmp_path, capsys):
    import json
    import shutil

    (tmp_path / "file.txt").write_text("not a directory")
    edited = shutil.copytree(trained / "ckpt-0000040", tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["model"]["hidden"] = "64"
    (edited / "config.json").write_text(json.dumps(config))
    tampered = shutil.copytree(trained / "ckpt-0000040", tmp_path / "tampered")
    (tampered / "ema.safetensors").write_bytes(b"junk")
    argv = args.format(tmp=tmp_path, data=crafter, run=trained).split()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse: a bad option value
        code = exit.code
    err = capsys.readouterr().err
    if not message:  # a control: the fixture's files do not break a good command
        assert code == 0, err
        return
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]  # progress bars may precede it
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("scd "), err


def test_info_accepts_the_papers_preset_names_and_shipped_models(capsys):
    assert main(["info", "DiT-B"]) == 0 and main(["info", "SCD-M", "--json"]) == 0
    assert main(["info", "crafter-scd"]) == 0
    out = capsys.readouterr().out
    assert "dit-b" in out and '"name": "scd-m"' in out and "crafter-scd" in out


def test_help_and_version_start_without_torch():
    import subprocess
    import sys

    code = "import sys; from scd.cli import main\ntry: main(sys.argv[1:])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported'"
    for args in (["--help"], ["--version"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert "scd 0.1.0" in done.stdout


def test_train_and_generate_options_take_their_defaults_from_the_library():
    import inspect

    from scd.cli import build_parser
    from scd.cli.train import TRAINING_OPTIONS, training_config
    from scd.flow import FlowConfig
    from scd.sampling import Streamer
    from scd.train import TrainConfig

    train = build_parser("train").parse_args(["train", "--data", "d", "--out", "o"])
    assert training_config(train, None) == TrainConfig()  # a new run: the library's defaults
    defaults = TrainConfig().to_dict()
    for key in TRAINING_OPTIONS.values():  # every option names a field
        *section, name = key.split(".")
        assert name in (defaults[section[0]] if section else defaults), key
    given = build_parser("train").parse_args("train --data d --out o --ema 0.99 --eta 0.1 --no-bf16 --lr-min 0".split())
    saved = TrainConfig(ema_decay=0.9, bf16=True, lr=1e-3, flow=FlowConfig(context_noise=0.2, shift=3.0))
    cfg = training_config(given, saved.to_dict())  # a resumed run: its own options, except those given
    assert (cfg.ema_decay, cfg.bf16, cfg.lr, cfg.lr_min, cfg.flow.context_noise, cfg.flow.shift) == \
        (0.99, False, 1e-3, 0.0, 0.1, 3.0)
    generate = build_parser("generate").parse_args(["generate"])
    defaults = inspect.signature(Streamer).parameters
    assert (generate.steps, generate.samples, generate.seed, generate.shift) == tuple(
        defaults[name].default for name in ("steps", "num_samples", "seed", "shift"))


def test_a_trainer_state_with_objects_is_refused_without_suggesting_unsafe_loading(tmp_path):
    from fractions import Fraction

    from scd.checkpoint import load_trainer_state, save_checkpoint
    from scd.config import get_preset
    from scd.models import build_model

    path = save_checkpoint(tmp_path / "ckpt", build_model(get_preset("scd-tiny")), trainer_state={"x": Fraction(1, 3)})
    with pytest.raises(ValueError, match="holds objects other than tensors") as err:
        load_trainer_state(path)
    assert "weights_only" not in str(err.value)


def test_export_makes_a_lean_checkpoint_that_loads_like_the_ema(trained, tmp_path):
    import torch

    from scd.checkpoint import load_checkpoint

    assert main(["export", str(trained), "--out", str(tmp_path / "lean")]) == 0
    assert sorted(p.name for p in (tmp_path / "lean").iterdir()) == ["config.json", "model.safetensors"]
    (lean, lean_info), (full, full_info) = load_checkpoint(tmp_path / "lean"), load_checkpoint(trained)
    for (name, a), b in zip(lean.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b), name
    assert lean_info["data"] == full_info["data"]


def test_generate_reads_a_context_file(trained, crafter, tmp_path):
    from scd.data.context import load_context, load_context_npz, save_context_npz

    path = save_context_npz(tmp_path / "ctx.npz", load_context(crafter, 10))  # first 10 frames of each episode
    assert load_context_npz(path).frames.shape == (2, 10, 64, 64, 3)
    gif = tmp_path / "v.gif"
    args = f"generate --checkpoint {trained} --data {path} --episode 1 --context 3 --frames 4 --steps 1 --out {gif}"
    assert main(args.split()) == 0
    assert len(imageio.mimread(gif)) == 7
    assert main(f"generate --checkpoint {trained} --data {path} --episode 2 --out {gif}".split()) == 2


def test_the_readme_python_example_runs_as_written(capsys):
    import re
    from pathlib import Path

    import torch

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a shared 2-core machine: one thread is many times faster
    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out.split("\n")
    assert printed[:4] == ["torch.Size([1, 2, 8, 16, 16]) torch.Size([1, 2, 64, 64, 3])"] * 4  # latents, uint8


def test_demo_fine_tunes_the_shipped_model_and_compares_on_held_out_episodes(tmp_path, capfd):
    out = tmp_path / "demo"
    args = f"demo --out {out} --minutes 0.02 --episodes 3 --length 17 --held-out 1 --frames 4 --steps 1"
    assert main(args.split()) == 0
    printed, err = capfd.readouterr()
    assert "held-out PSNR over 1 episodes x 4 generated frames: shipped" in printed
    assert "warning: only" in err and "fine-tuning steps have run" in err  # 1 s is far too short: it says so
    assert " s [" in err  # the bar counts seconds of the budget, not steps
    video = imageio.mimread(out / "demo.mp4")
    assert len(video) == 4 + 4  # one held-out episode: context + generated
    assert video[0].shape[1] == 3 * 4 * 64 + 2 * 4  # ground truth | shipped | fine-tuned
    assert (out / "run" / "latest").exists()


def test_damaged_or_foreign_context_files_are_one_line_errors(trained, tmp_path, capsys):
    import numpy as np

    from scd.data.context import load_context_npz

    good = tmp_path / "good.npz"
    np.savez(good, frames=np.zeros((1, 5, 64, 64, 3), np.uint8), actions=np.zeros((1, 5), np.int64))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x80\x04garbage, not an archive" * 10)
    objects = tmp_path / "objects.npz"
    np.savez(objects, frames=np.array([{"a": 1}], dtype=object), actions=np.zeros((1, 5), np.int64))
    for path, message in [(truncated, "not a complete .npz archive"), (garbage, "not a complete .npz archive"),
                          (objects, "holds Python objects")]:
        with pytest.raises(ValueError, match=message) as err:
            load_context_npz(path)
        assert "allow_pickle" not in str(err.value)
        assert main(f"generate --checkpoint {trained} --data {path} --context 3 --out {tmp_path}/v.gif".split()) == 2
        out = capsys.readouterr().err.strip()
        assert message in out and len(out.splitlines()) == 1
    for command in ("play --benchmark 1", "eval --checkpoint x --out o", "bench"):
        with pytest.raises(SystemExit):
            main(f"{command} --device foo".split())
        assert "unknown device 'foo'" in capsys.readouterr().err


def test_fine_tuning_keeps_the_network_and_takes_the_given_sampling_settings(trained, crafter, tmp_path, capsys):
    from scd.checkpoint import export_checkpoint, read_config

    out = tmp_path / "ft"
    args = f"train --init-from {trained} --data {crafter} --out {out} --steps 2 --batch 2 --clip-len 4 " \
           f"--prediction change --sample-steps 3 --sample-temperature 0.5 --sample-shift 0.2 --log-every 1"
    assert main(args.split()) == 0
    source, tuned = read_config(trained)["model"], read_config(out)["model"]
    settings = ("prediction", "sample_steps", "sample_temperature", "sample_shift")
    assert tuple(tuned[k] for k in settings) == ("change", 3, 0.5, 0.2)
    assert {k: v for k, v in tuned.items() if k not in settings} == \
        {k: v for k, v in source.items() if k not in settings}
    lean = read_config(export_checkpoint(out, tmp_path / "lean", sample_steps=2, sample_temperature=0.25,
                                         sample_shift=0.1, sample_window=2))
    assert (lean["model"]["sample_steps"], lean["model"]["sample_temperature"], lean["model"]["sample_shift"],
            lean["model"]["sample_window"]) == (2, 0.25, 0.1, 2)
    # scd generate streams with the model's sample_window (2), not its trained window (3)
    assert main(f"generate --checkpoint {tmp_path / 'lean'} --context 3 --frames 1 --out {tmp_path}/v.mp4".split()) == 2
    assert "--context 3 exceeds the history window of 2" in capsys.readouterr().err
    # the weights' history travels with them: this run started from `trained`, and a run from this one says both
    parent = read_config(trained)
    started = {"path": parent["path"], "weights": "ema.safetensors", "sha256": parent["files"]["ema.safetensors"],
               "step": parent["step"], "init_from": None}
    assert read_config(out)["init_from"] == started and lean["init_from"] == started
    again = f"train --init-from {tmp_path / 'lean'} --data {crafter} --out {tmp_path / 'ft2'} --batch 2 --clip-len 4 " \
            f"--log-every 1 --steps"
    assert main(f"{again} 1".split()) == 0
    chain = read_config(tmp_path / "ft2")["init_from"]
    assert (chain["step"], chain["weights"], chain["sha256"], chain["init_from"]) == \
        (2, "model.safetensors", lean["files"]["model.safetensors"], started)
    assert main(f"{again} 2".split()) == 0  # the same command resumes the run: the record stays
    assert read_config(tmp_path / "ft2")["step"] == 2 and read_config(tmp_path / "ft2")["init_from"] == chain
    # so does a bare command: the run's own network (scd-tiny, not the default preset), the changes named
    capsys.readouterr()
    bare = f"train --data {crafter} --out {tmp_path / 'ft2'} --batch 2 --clip-len 4 --log-every 1 --steps 3 --lr 2e-4"
    assert main(bare.split()) == 0
    said = capsys.readouterr().out
    assert "lr 0.0003 -> 0.0002" in said and "steps 2 -> 3" in said and "warmup" not in said and "betas" not in said
    tuned = read_config(tmp_path / "ft2")
    assert tuned["step"] == 3 and tuned["init_from"] == chain and tuned["model"] == lean["model"]
    assert main(f"{bare} --preset scd-xs".split()) == 2  # a preset given must be the run's
    assert "cannot resume" in capsys.readouterr().err
    # options not given are the run's own, not the library's defaults: only the new step count is a change
    assert main(f"train --data {crafter} --out {tmp_path / 'ft2'} --steps 4".split()) == 0
    said = capsys.readouterr().out
    assert "steps 3 -> 4" in said and "lr" not in said.split("other training options")[1].split("\n")[0]
    train = read_config(tmp_path / "ft2")["train"]
    assert (train["steps"], train["lr"], train["batch"], train["clip_len"], train["log_every"]) == (4, 2e-4, 2, 4, 1)
