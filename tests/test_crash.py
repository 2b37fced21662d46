"""Crash-proof runs: kills at random points, damaged run folders, full disks, and commands that would overwrite
checkpoints. Tiny configs on the CPU."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scd
from scd.checkpoint import (
    check_resumable,
    latest_checkpoint,
    load_model,
    load_trainer_state,
    read_config,
    save_checkpoint,
)
from scd.cli import main
from scd.models import build_model
from scd.train import TrainConfig, read_log, train

from test_train import FLOW, MovingSquares, tiny_config

TESTS = Path(__file__).parent


def short(steps=4, **kw):
    return TrainConfig(**{**dict(steps=steps, batch=2, clip_len=4, lr=1e-3, warmup=1, ckpt_every=2, log_every=1,
                                 flow=FLOW), **kw})


def logged(run):
    return [(int(r["step"]), float(r["loss"])) for r in read_log(run / "log.csv")]


# -- export and convert never destroy checkpoints ------------------------------------------------------------
def test_export_and_convert_refuse_an_existing_out_and_never_replace_the_source(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config("causal_dit"), MovingSquares(), run, short(steps=2), progress=False)
    ckpt = latest_checkpoint(run)
    before = sorted(p.name for p in ckpt.iterdir())
    assert "trainer.pt" in before

    lean = tmp_path / "lean"
    assert main(["export", str(run), "--out", str(lean)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(lean)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(lean), "--overwrite"]) == 0
    for out in (ckpt, run):  # the checkpoint itself, or the run folder holding it: refused even with --overwrite
        assert main(["export", str(out), "--out", str(out), "--overwrite"]) == 2
        assert "would replace the source checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in ckpt.iterdir()) == before  # still a training checkpoint
    load_trainer_state(ckpt)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(other), "--overwrite"]) == 2
    assert "not a checkpoint: not replacing it" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"

    convert = f"convert --checkpoint {run} --encoder-depth 1 --decoder-prefix 1 --decoder-suffix 1 --out".split()
    assert main(convert + [str(lean)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert "converted_from" not in read_config(lean)
    assert main(convert + [str(lean), "--overwrite"]) == 0
    assert "converted_from" in read_config(lean)
    assert main(convert + [str(run), "--overwrite"]) == 2
    assert "would replace the source checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in ckpt.iterdir()) == before


# -- damaged run folders ---------------------------------------------------------------------------------------
def test_a_newest_checkpoint_without_config_stops_the_run_instead_of_restarting(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config("scd"), MovingSquares(), run, short(steps=4), progress=False)
    newest = run / "ckpt-0000004"
    (newest / "config.json").unlink()
    weights = (newest / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="ckpt-0000004 has no config.json"):
        train(tiny_config("scd"), MovingSquares(), run, short(steps=6), progress=False)
    assert (newest / "model.safetensors").read_bytes() == weights and not (newest / "config.json").exists()
    assert [s for s, _ in logged(run)] == [1, 2, 3, 4]  # the log is untouched too


def test_the_newest_complete_checkpoint_wins_over_a_stale_latest_pointer(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("scd"), MovingSquares(), run, short(steps=4), progress=False)
    (run / "latest").write_text("ckpt-0000002")  # a kill between the checkpoint's rename and the pointer's
    assert latest_checkpoint(run).name == "ckpt-0000004"
    resumed = train(tiny_config("scd"), MovingSquares(), run, short(steps=6), progress=False)
    assert [s for s, _ in logged(run)] == [1, 2, 3, 4, 5, 6]
    assert resumed.step == 6


def test_a_config_without_its_sha256_list_is_refused(tmp_path):
    import json

    path = save_checkpoint(tmp_path / "ckpt", build_model(tiny_config("scd")))
    config = json.loads((path / "config.json").read_text())
    del config["files"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lists no sha256 for"):
        load_model(path)


def test_stale_temporaries_are_removed_and_a_checkpoint_moved_aside_is_put_back(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("scd"), MovingSquares(), run, short(steps=4, keep_checkpoints=2), progress=False)
    partial = run / ".ckpt-0000006.tmp-12345"  # a writer killed mid-checkpoint
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)
    (run / ".log.csv.tmp").write_text("step\n")
    os.replace(run / "ckpt-0000004", run / ".ckpt-0000004.old-777")  # killed while replacing ckpt-4
    assert latest_checkpoint(run).name == "ckpt-0000002"
    resumed = train(tiny_config("scd"), MovingSquares(), run, short(steps=6, keep_checkpoints=2), progress=False)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-0000004", "ckpt-0000006"]
    assert resumed.step == 6 and [s for s, _ in logged(run)] == [1, 2, 3, 4, 5, 6]


# -- log.csv ----------------------------------------------------------------------------------------------------
def test_the_log_has_no_duplicates_after_a_rerun_before_the_first_checkpoint_or_a_cut_row(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("scd"), MovingSquares(), run, short(steps=3, ckpt_every=2), progress=False)
    straight = logged(run)
    # a run killed after logging steps 1-3 but before any checkpoint, with its last row cut short
    for p in run.glob("ckpt-*"):
        import shutil
        shutil.rmtree(p)
    with open(run / "log.csv", "a") as f:
        f.write("4,0.12")
    assert [s for s, _ in logged(run)] == [1, 2, 3]  # the cut row is not read
    train(tiny_config("scd"), MovingSquares(), run, short(steps=3, ckpt_every=2), progress=False)
    assert logged(run) == straight
    assert (run / "log.csv").read_text().count("\n") == 4  # header + 3 rows, the cut row gone


# -- full disk -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["safetensors", "torch.save"])
def test_a_failed_checkpoint_write_cleans_up_and_names_the_intact_checkpoint(tmp_path, monkeypatch, failure):
    import scd.checkpoint as checkpoint

    run = tmp_path / "run"
    trainer = train(tiny_config("scd"), MovingSquares(), run, short(steps=2), progress=False)
    if failure == "safetensors":
        def full(tensors, path, *a, **k):
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(checkpoint, "save_file", full)
    else:
        def full(obj, path, *a, **k):
            Path(path).write_bytes(b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 591168 vs 591060")
        monkeypatch.setattr(checkpoint.torch, "save", full)
    trainer.cfg = short(steps=4)
    with pytest.raises(OSError) as err:
        trainer.run(progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "checkpoint at step 4 not written" in message and "ckpt-0000002 (step 2) is intact" in message
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert latest_checkpoint(run).name == "ckpt-0000002"
    monkeypatch.undo()
    resumed = train(tiny_config("scd"), MovingSquares(), run, short(steps=4), progress=False)
    assert resumed.step == 4 and [s for s, _ in logged(run)] == [1, 2, 3, 4]


# -- kill -9 at random points ----------------------------------------------------------------------------------
KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_train import FLOW, MovingSquares, tiny_config
from scd.train import TrainConfig, train
cfg = TrainConfig(steps={steps}, batch=2, clip_len=4, lr=1e-3, warmup=1, ckpt_every={every}, keep_checkpoints=2,
                  log_every=1, flow=FLOW)
print("started", flush=True)
train(tiny_config("scd"), MovingSquares(), {run!r}, cfg, progress=False)
"""


def test_kill_9_at_random_points_never_loses_more_than_one_interval_or_picks_a_bad_checkpoint(tmp_path):
    steps, every = 30, 3
    cfg = short(steps=steps, ckpt_every=every, keep_checkpoints=2)
    straight = train(tiny_config("scd"), MovingSquares(), tmp_path / "straight", cfg, progress=False)
    run = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(TESTS), steps=steps, every=every, run=str(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(scd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    rng = random.Random(0)
    for kill in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "started"
        first = len(logged(run)) if (run / "log.csv").exists() else 0
        deadline = time.monotonic() + 60
        while (len(logged(run)) if (run / "log.csv").exists() else 0) <= first and time.monotonic() < deadline:
            time.sleep(0.01)  # wait for this run's first step, then kill it at a random moment
        time.sleep(rng.uniform(0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last_logged = max((s for s, _ in logged(run)), default=0)
        chosen = check_resumable(run)
        step = int(chosen.name.split("-")[1]) if chosen else 0
        assert last_logged - step <= every, (kill, last_logged, step)
        if chosen is not None:  # whatever is chosen loads and verifies
            load_model(chosen, "model")
            load_trainer_state(chosen)
    finished = train(tiny_config("scd"), MovingSquares(), run, cfg, progress=False)
    assert finished.step == steps
    assert logged(run) == logged(tmp_path / "straight")
    for (name, a), b in zip(finished.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
