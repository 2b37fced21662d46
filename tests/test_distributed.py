"""The training engine's parts, devices and seeded streams, and data-parallel training under torchrun (gloo on
the CPU). One torchrun launch (2 processes) covers: 2 processes = 1 process, a 2-process checkpoint resumed by 1
process, and a 1-process checkpoint resumed exactly by 2 processes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scd
from scd.checkpoint import load_model, load_trainer_state, load_weights, read_config
from scd.cli import build_parser
from scd.models import build_model
from scd.train import EMA, StepBatches, TrainConfig, Trainer, read_log, stream_seed, train

from test_train import FLOW, MovingSquares, tiny_config

TESTS = Path(__file__).parent


def config(steps, **kw):
    return TrainConfig(**{**dict(steps=steps, batch=4, micro_batch=2, clip_len=4, lr=1e-3, warmup=1, ckpt_every=2,
                                 log_every=1, flow=FlowWithNoise), **kw})


FlowWithNoise = FLOW.__class__(K=2, action_dropout=0.25, context_noise=0.05, history_noise=0.2)


def losses(run):
    return [float(r["loss"]) for r in read_log(Path(run) / "log.csv")]


def test_step_batches_split_the_global_batch_into_disjoint_rank_shares():
    whole = next(iter(StepBatches(100, 6, seed=1, start=5)))
    shares = [next(iter(StepBatches(100, 6, seed=1, start=5, rank=r, world=3))) for r in range(3)]
    assert sum(shares, []) == whole and all(len(s) == 2 for s in shares)
    later = iter(StepBatches(100, 6, seed=1, start=4))
    next(later)
    assert next(later) == whole  # a loader started at step 5 draws what a loader started earlier draws there
    assert next(iter(StepBatches(100, 6, seed=2, start=5))) != whole
    assert stream_seed(0, 3, 1) != stream_seed(0, 3, 2) != stream_seed(0, 4, 1)


def test_micro_batches_and_worker_processes_do_not_change_the_losses(tmp_path):
    """Micro-batches of a fixed size draw the same noise however the global batch is processed: a 2-clip
    micro-batch run with 2 loader workers equals the same run with the loader in the main process."""
    a = train(tiny_config("scd"), MovingSquares(), tmp_path / "a", config(3), progress=False)
    b = train(tiny_config("scd"), MovingSquares(), tmp_path / "b", config(3), progress=False, workers=2)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    c = train(tiny_config("scd"), MovingSquares(), tmp_path / "c", config(3, micro_batch=None), progress=False)
    assert losses(tmp_path / "c") != losses(tmp_path / "a")  # one 4-clip pass draws other noise: the test can fail
    for x in (b, c):
        assert x.step == a.step == 3


def test_every_part_of_the_trainer_can_be_swapped(tmp_path):
    calls = []

    def objective(model, frames, actions):  # a toy objective: it sees the batch on the device
        calls.append((frames.shape, actions.shape, frames.device.type))
        return sum(p.pow(2).sum() for p in model.parameters()) * 1e-3

    torch.manual_seed(0)
    model = build_model(tiny_config("scd"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    data = MovingSquares()

    def loader(start):  # always clips 0 and 1
        while True:
            yield torch.stack([data[0][0], data[1][0]]), torch.stack([data[0][1], data[1][1]])

    trainer = Trainer(model, data, tmp_path, TrainConfig(steps=2, batch=2, clip_len=4, flow=FLOW), objective=objective,
                      optimizer=optimizer, scheduler=scheduler, ema=EMA(model, 0.0), loader=loader)
    before = sum(p.pow(2).sum() for p in model.parameters()).item()
    trainer.run(progress=False)
    assert calls == [(torch.Size([2, 4, 3, 16, 16]), torch.Size([2, 4]), "cpu")] * 2
    assert sum(p.pow(2).sum() for p in model.parameters()).item() < before  # SGD on the toy loss shrank them
    for e, p in zip(trainer.ema.module.parameters(), model.parameters()):  # decay 0: the EMA is the model
        assert torch.equal(e, p)


def test_device_option_is_checked_and_bf16_autocast_trains(tmp_path, capsys):
    parser = build_parser("train")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--device", "tpu"])
    assert "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--data", "d", "--out", "o", "--device", "cuda:0"])
        assert "CUDA is not available" in capsys.readouterr().err
    trainer = train(tiny_config("scd"), MovingSquares(), tmp_path, config(2, bf16=True), progress=False)
    assert trainer.model.device.type == "cpu" and all(map(lambda x: x == x, losses(tmp_path)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_resumes_a_cpu_checkpoint_exactly_within_tolerance(tmp_path):
    cpu = train(tiny_config("scd"), MovingSquares(), tmp_path / "cpu", config(4), progress=False)
    train(tiny_config("scd"), MovingSquares(), tmp_path / "mixed", config(2), progress=False)
    mixed = train(tiny_config("scd"), MovingSquares(), tmp_path / "mixed", config(4), progress=False, device="cuda")
    assert mixed.model.device.type == "cuda"
    torch.testing.assert_close(losses(tmp_path / "mixed"), losses(tmp_path / "cpu"), rtol=1e-3, atol=1e-4)
    assert cpu.step == mixed.step == 4


TORCHRUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_distributed import config
from test_train import MovingSquares, tiny_config
from scd.train import train
# a fresh 2-process run to step 2, then a 2-process resume (with loader workers) of a 1-process run at step 2
train(tiny_config("scd"), MovingSquares(), {two!r}, config(2), progress=False)
train(tiny_config("scd"), MovingSquares(), {resumed!r}, config(4), progress=False, workers=1)
"""


def test_torchrun_two_processes_equal_one_and_checkpoints_move_between_process_counts(tmp_path):
    one = train(tiny_config("scd"), MovingSquares(), tmp_path / "one", config(4), progress=False)
    train(tiny_config("scd"), MovingSquares(), tmp_path / "resumed", config(2), progress=False)
    script = tmp_path / "job.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(TESTS), two=str(tmp_path / "two"),
                                             resumed=str(tmp_path / "resumed")))
    torchrun(script)
    full = losses(tmp_path / "one")
    # 2 processes, global batch 4 = 2 x 2 clips: the 1-process losses (the gradient's sum order may differ)
    torch.testing.assert_close(losses(tmp_path / "two"), full[:2], rtol=1e-5, atol=1e-6)
    # a 1-process checkpoint resumed by 2 processes
    torch.testing.assert_close(losses(tmp_path / "resumed"), full, rtol=1e-5, atol=1e-6)
    assert read_config(tmp_path / "resumed")["step"] == 4
    # a 2-process checkpoint resumed by 1 process
    two = train(tiny_config("scd"), MovingSquares(), tmp_path / "two", config(4), progress=False)
    torch.testing.assert_close(losses(tmp_path / "two"), full, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(load_model(tmp_path / "two").state_dict().items(), one.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())


FSDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_distributed import config, ROLLOUT
from test_train import MovingSquares, tiny_config
from scd.train import train
# FSDP2 over 2 processes: a fresh run to step 2, a resume of a 1-process run at step 2 to step 4, and rollout
# training (sampling with the sharded model under no_grad) of a Causal DiT
train(tiny_config("scd"), MovingSquares(), {two!r}, config(2), progress=False, parallel="fsdp")
train(tiny_config("scd"), MovingSquares(), {resumed!r}, config(4), progress=False, parallel="fsdp")
train(tiny_config("causal_dit"), MovingSquares(), {rollout!r}, config(2, **ROLLOUT), progress=False, parallel="fsdp")
"""

ROLLOUT = dict(rollout_steps=1, rollout_context=2, flow=FLOW)


def torchrun(script: Path, timeout: float = 180) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(scd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # torchrun and its workers
        _, err = job.communicate()
    assert job.returncode == 0, err[-3000:]


def test_fsdp_on_two_processes_equals_one_process_and_its_checkpoints_move_between_strategies(tmp_path):
    """FSDP2 (fully_shard) on gloo: the same losses as 1 process with the same global batch; its checkpoint (full
    state dicts gathered on rank 0) resumes exactly under 1 process and loads with load_model; a 1-process
    checkpoint resumes exactly under FSDP; rollout training samples with the sharded model."""
    one = train(tiny_config("scd"), MovingSquares(), tmp_path / "one", config(4), progress=False)
    train(tiny_config("scd"), MovingSquares(), tmp_path / "resumed", config(2), progress=False)
    train(tiny_config("causal_dit"), MovingSquares(), tmp_path / "rollout-one", config(2, **ROLLOUT), progress=False)
    script = tmp_path / "job.py"
    script.write_text(FSDP_SCRIPT.format(tests=str(TESTS), two=str(tmp_path / "two"), resumed=str(tmp_path / "resumed"),
                                         rollout=str(tmp_path / "rollout")))
    torchrun(script)
    full = losses(tmp_path / "one")
    torch.testing.assert_close(losses(tmp_path / "two"), full[:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses(tmp_path / "resumed"), full, rtol=1e-5, atol=1e-6)
    rollout = losses(tmp_path / "rollout-one")
    assert rollout != losses(tmp_path / "one")[:2]  # the rollout objective ran, not teacher forcing
    torch.testing.assert_close(losses(tmp_path / "rollout"), rollout, rtol=1e-5, atol=1e-6)
    # the FSDP checkpoint is the usual single-file one: same tensors, names and shapes as a 1-process checkpoint
    fsdp_ckpt, one_ckpt = tmp_path / "two" / "ckpt-0000002", tmp_path / "one" / "ckpt-0000002"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_weights(fsdp_ckpt, name)[1], load_weights(one_ckpt, name)[1]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
    a, b = load_trainer_state(fsdp_ckpt)["optimizer"], load_trainer_state(one_ckpt)["optimizer"]
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in b["state"]:
        for key in b["state"][i]:
            torch.testing.assert_close(a["state"][i][key], b["state"][i][key], rtol=1e-4, atol=1e-7)
    # resumed under 1 process: the rest of the 1-process run
    two = train(tiny_config("scd"), MovingSquares(), tmp_path / "two", config(4), progress=False)
    torch.testing.assert_close(losses(tmp_path / "two"), full, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(load_model(tmp_path / "two").state_dict().items(), one.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert two.step == 4 and not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())


def test_parallel_strategy_is_checked():
    from scd.parallel import DataParallel, FullyShardedDataParallel, SingleProcess, strategy

    assert type(strategy("fsdp", 2)) is FullyShardedDataParallel and type(strategy("ddp", 2)) is DataParallel
    assert type(strategy("fsdp", 1)) is SingleProcess  # one process has nothing to split
    with pytest.raises(ValueError, match="unknown parallel strategy 'zero3'"):
        strategy("zero3", 2)
    args = build_parser("train").parse_args(["train", "--data", "d", "--out", "o", "--parallel", "fsdp"])
    assert args.parallel == "fsdp"
