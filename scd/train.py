"""One training loop for both models: an objective (objectives.py: flow matching with teacher forcing, or rollout
training), AdamW, warm-up and optional cosine decay, EMA, bf16 autocast, gradient clipping, atomic checkpoints and
exact resumption."""

from __future__ import annotations

import atexit
import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    LATEST,
    check_resumable,
    checkpoint_identity,
    codec_record,
    latest_checkpoint,
    load_model,
    load_trainer_state,
    load_weights,
    model_codec,
    read_config,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import SAMPLER_DEFAULTS, ModelConfig
from .fileio import atomic_write_text
from .flow import FlowConfig
from .models import WorldModel, build_model
from .critic import FrameCritic
from .objectives import AdversarialRollout, FlowMatching, OneStepHistory, RolloutTraining
from .parallel import SingleProcess, strategy
from .plots import pyplot, save_figure
from .surgery import Surgery

LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch: int = 8
    clip_len: int = 8
    lr: float = 3e-4
    warmup: int = 100  # linear warm-up steps, then constant (lr_min None) or cosine decay to lr_min at `steps`
    lr_min: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = False  # bf16 autocast (about 2x faster on a CPU at width >= 256)
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    flow: FlowConfig = field(default_factory=FlowConfig)
    surgery: Surgery | None = None  # fine-tune a Causal DiT under a skip-layer schedule / frame-diagonal last blocks
    # Rollout training (objectives.RolloutTraining) when > 0: history sampled by the model with this many Euler
    # steps after `rollout_context` recorded frames; 0 = teacher forcing (objectives.FlowMatching).
    rollout_steps: int = 0
    rollout_context: int = 1
    # each sampled history frame from the recorded frames before it (objectives.OneStepHistory), not a rollout
    rollout_one_step: bool = False
    # Adversarial rollout training (objectives.AdversarialRollout) when > 0: teacher forcing plus this weight times
    # a critic's verdict on frames rendered from the model's own rollout (rollout_steps, rollout_context); the
    # critic (critic.FrameCritic) learns at critic_lr.
    adversarial_weight: float = 0.0
    critic_lr: float = 1e-4
    # Clips per forward pass (gradient accumulation; None: each process's whole share of `batch`). Each micro-batch
    # draws its noise from a stream seeded by (seed, step, its index in the global batch), so runs with the same
    # batch and micro_batch give the same losses on any number of processes.
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if isinstance(self.flow, dict):
            object.__setattr__(self, "flow", FlowConfig(**self.flow))
        if isinstance(self.surgery, dict):
            object.__setattr__(self, "surgery", Surgery(**self.surgery))
        problems = [
            f"{name} must be >= {low}, got {getattr(self, name)}"
            for name, low in [("steps", 1), ("batch", 1), ("clip_len", 1), ("ckpt_every", 1), ("keep_checkpoints", 1),
                              ("log_every", 1), ("warmup", 0), ("grad_clip", 0), ("weight_decay", 0)]
            if getattr(self, name) < low
        ]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.lr_min is not None and not 0 <= self.lr_min <= self.lr:
            problems.append(f"lr_min must be in [0, lr={self.lr}], got {self.lr_min}")
        if self.rollout_steps < 0 or self.rollout_context < 1:
            problems.append(f"rollout_steps must be >= 0 and rollout_context >= 1, got {self.rollout_steps}, "
                            f"{self.rollout_context}")
        elif self.rollout_steps and self.rollout_context >= self.clip_len:
            problems.append(f"rollout_context ({self.rollout_context}) must be shorter than clip_len ({self.clip_len})")
        if self.rollout_one_step and not self.rollout_steps:
            problems.append("rollout_one_step needs rollout_steps >= 1 (the Euler steps of the sampled history)")
        if self.adversarial_weight < 0 or not self.critic_lr > 0:
            problems.append(f"adversarial_weight must be >= 0 and critic_lr > 0, got {self.adversarial_weight}, "
                            f"{self.critic_lr}")
        elif self.adversarial_weight and (not self.rollout_steps or self.rollout_one_step):
            problems.append("adversarial_weight needs rollout_steps >= 1 (the Euler steps of the rollout and of the "
                            "rendered frames) and no rollout_one_step")
        if self.rollout_steps and self.surgery is not None:
            problems.append("rollout training does not combine with a surgery")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch:
            problems.append(f"micro_batch must be in [1, batch={self.batch}], got {self.micro_batch}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The options a checkpoint saved (config.json's "train"), without the keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        options = {k: v for k, v in data.items() if k in known}
        if "flow" in options:
            options["flow"] = FlowConfig.from_dict(options["flow"])
        return cls(**options)

    def objective(self, model: WorldModel | None = None):
        """The training objective these options describe (an adversarial one builds its critic for `model`)."""
        if self.adversarial_weight:
            if model is None:
                raise ValueError("adversarial training builds a critic for the model's frames: pass the model")
            return AdversarialRollout(self.flow, self.rollout_steps, self.rollout_context,
                                      critic=FrameCritic(model.config.frame_shape), weight=self.adversarial_weight,
                                      critic_lr=self.critic_lr)
        if self.rollout_steps:
            kind = OneStepHistory if self.rollout_one_step else RolloutTraining
            return kind(self.flow, self.rollout_steps, self.rollout_context)
        return FlowMatching(self.flow, self.surgery)

    def lr_factor(self, step: int) -> float:
        """Multiplier of lr after `step` optimiser steps: linear warm-up, then constant or cosine decay to lr_min."""
        warm = max(self.warmup, 1)
        if step + 1 < warm or self.lr_min is None:
            return min(1.0, (step + 1) / warm)
        progress = min(1.0, (step + 1 - warm) / max(1, self.steps - warm))
        floor = self.lr_min / self.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except (TypeError, ValueError):
        return False
    return True


def read_log(path) -> list[dict]:
    """The rows of a run's log.csv; a row cut short by a kill mid-write is left out."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("seconds") and None not in r and _is_int(r["step"])]


def _checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}"


def stream_seed(seed: int, step: int, part: int | str) -> int:
    """A 63-bit seed for one random stream of one step: `part` is "data" (the clip indices of the global batch) or
    the index of a micro-batch in the global batch (its noise). Streams that are pure functions of (seed, step,
    part) make a resumed run exact on any device and any number of processes, with no generator state saved."""
    digest = hashlib.sha256(f"scd/{seed}/{step}/{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler of one process: for each step from `start`, the indices of this rank's share of the global
    batch (clips drawn with replacement from a stream seeded by (seed, step)); rank r takes the r-th of `world`
    equal slices, so the ranks' shares are disjoint and together are the 1-process batch."""

    def __init__(self, num_clips: int, batch: int, seed: int, start: int, rank: int = 0, world: int = 1):
        self.num_clips, self.batch, self.seed, self.start, self.rank, self.world = num_clips, batch, seed, start, rank, world

    def __iter__(self):
        share = self.batch // self.world
        step = self.start
        while True:
            g = torch.Generator().manual_seed(stream_seed(self.seed, step, "data"))
            idx = torch.randint(self.num_clips, (self.batch,), generator=g)
            yield idx[self.rank * share : (self.rank + 1) * share].tolist()
            step += 1


class EMA(torch.nn.Module):
    """Exponential moving average of a model's weights (what generation uses), with a warm-up of its decay so
    short runs are not dominated by the initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.module.parameters(), model.parameters()):  # under FSDP: matching shards (DTensors)
            e.lerp_(p, 1 - decay)


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Processes":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | torch.device) -> torch.device:
        """The device of this process: under torchrun, `cuda` means cuda:LOCAL_RANK."""
        device = torch.device(requested)
        if device.type == "cuda" and self.world > 1:
            if device.index is not None:
                raise ValueError(f"--device {requested} under torchrun: give --device cuda, each process takes "
                                 "cuda:LOCAL_RANK")
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {requested}: CUDA is not available on this machine")
            if (device.index or 0) >= torch.cuda.device_count():
                raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
            if device.index is None:  # an index, which torch.random.fork_rng needs (torch 2.11)
                device = torch.device("cuda", torch.cuda.current_device())
        return device


def _barrier(procs: Processes) -> None:
    if procs.world > 1:
        torch.distributed.barrier()


def _check_same_codec(config: dict, model: WorldModel, what: str) -> None:
    """A checkpoint's config (its "codec" record) and `model` must work in the same codec's space."""
    record = config.get("codec") if isinstance(config.get("codec"), dict) else {}
    mine = model_codec(model)
    if record.get("fingerprint") and mine is not None and record["fingerprint"] != mine.fingerprint():
        raise ValueError(f"{what}: it was trained with another codec ({record.get('kind')} codec, frames "
                         f"{record.get('frame_shape')}) than this run's {mine.describe()}")


class Trainer:
    """Trains `model` on a clip dataset whose items are (frames (F, C, H, W) in the model's space, actions (F,)); a
    dataset with a `codec` (ClipDataset(codec=...)) attaches it to the model, and checkpoints record it.

    Built from parts, each replaceable from Python: the model; the objective (`objective(model, frames, actions)
    -> loss`, default cfg.objective()); the optimiser (default AdamW over the model's parameters, built after the
    model is on `device`); the schedule (a LambdaLR of cfg.lr_factor); the EMA (EMA); the data loader
    (`loader(start_step)` -> an iterator of this rank's (frames, actions) per step; default a DataLoader with
    `workers` worker processes over StepBatches). Under torchrun (WORLD_SIZE > 1 and an initialised process
    group) `parallel` (parallel.py: "ddp" DistributedDataParallel, "fsdp" FSDP2, or a strategy object) spreads
    the model over the ranks, each rank draws its share of the global batch and rank 0 alone writes the log and
    the checkpoints (full state dicts, whatever the strategy)."""

    def __init__(self, model: WorldModel, dataset, out_dir, cfg: TrainConfig, data_info: dict | None = None,
                 objective=None, *, device: str | torch.device = "cpu", optimizer=None, scheduler=None,
                 ema: EMA | None = None, loader=None, workers: int = 0, procs: Processes | None = None,
                 parallel: str | SingleProcess = "ddp"):
        if len(dataset) == 0:
            raise ValueError("the training dataset has no clips")
        codec = getattr(dataset, "codec", None)  # a ClipDataset's: its frames are in this codec's space
        if codec is not None:
            model.use_codec(codec)  # recorded in every checkpoint
        frames, actions = dataset[0]
        if frames.shape[0] != cfg.clip_len:
            raise ValueError(f"dataset clips have {frames.shape[0]} frames, the training config says {cfg.clip_len}")
        model.check_frames(frames[None], "dataset frames")
        model.check_actions(actions[None], (1, cfg.clip_len))
        if cfg.surgery is not None:
            cfg.surgery.check(model)
        data_actions = getattr(dataset, "num_actions", None)
        if data_actions is not None and data_actions > model.config.num_actions:
            raise ValueError(
                f"the dataset has {data_actions} actions but the model knows {model.config.num_actions}"
            )
        self.procs = procs or Processes.from_env()
        if self.procs.world > 1 and not torch.distributed.is_initialized():
            raise ValueError("WORLD_SIZE > 1 but no process group: use scd.train() or "
                             "torch.distributed.init_process_group() first")
        share = cfg.batch // self.procs.world
        if cfg.batch % self.procs.world or share % self.micro_batch_of(cfg, share):
            raise ValueError(f"--batch {cfg.batch} does not split into equal shares of --micro-batch "
                             f"{cfg.micro_batch} clips over {self.procs.world} processes")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.device = self.procs.device(device)
        self.parallel = strategy(parallel, self.procs.world)
        self.model = model.to(self.device)  # the module: checkpoints, EMA and the objective's own calls use it
        # the EMA copies the whole model before a strategy may shard it, then takes the model's layout
        self.ema = ema or EMA(self.model, cfg.ema_decay)
        self.ema.module.to(self.device)
        self.parallel.shard_copy(self.ema.module)
        # what the objective calls: the model, its DistributedDataParallel wrapper, or the model sharded in place
        self.net = self.parallel.wrap(self.model, self.device)
        self.dataset, self.cfg = dataset, cfg
        self.objective = objective or cfg.objective(self.model)  # objective(model, frames, actions) -> loss
        if hasattr(self.objective, "state_dict"):  # an objective with its own training state (a critic)
            if self.procs.world > 1:
                raise ValueError(f"{type(self.objective).__name__} trains its own state in one process, "
                                 f"not {self.procs.world}")
            self.objective.to(self.device)
        self.out_dir = Path(out_dir)
        self.data_info = data_info or {}
        self.init_from: dict | None = None  # the checkpoint whose weights started the run (start_record)
        self.optimizer = optimizer or torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = scheduler or torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_factor)
        self.loader = loader or self.data_loader
        self.workers = workers
        self.step = 0

    @staticmethod
    def micro_batch_of(cfg: TrainConfig, share: int) -> int:
        return cfg.micro_batch or max(share, 1)

    def data_loader(self, start: int):
        """This rank's (frames (b, F, C, H, W), actions (b, F)) for every step from `start`, b = batch / world."""
        sampler = StepBatches(len(self.dataset), self.cfg.batch, self.cfg.seed, start, self.procs.rank,
                              self.procs.world)
        return iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.workers,
                                                pin_memory=self.device.type == "cuda",
                                                worker_init_fn=leave_stop_signals_to_the_main_process))

    # -- state ------------------------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        """Optimiser (full, torch's layout), schedule and step, on the main process; every process calls it."""
        # no generator states: every random stream is seeded from (seed, step, part) (stream_seed)
        optimizer = self.parallel.optimizer_state(self.model, self.optimizer, self.procs.main)
        state = {"step": self.step, "optimizer": optimizer, "scheduler": self.scheduler.state_dict()}
        if hasattr(self.objective, "state_dict"):
            state["objective"] = self.objective.state_dict()
        return state

    def save(self) -> Path | None:
        """Checkpoint the current step. Every process calls it (a sharded model is gathered); rank 0 writes and
        returns the path, the others return None."""
        main = self.procs.main
        weights = self.parallel.model_state(self.model, main)
        ema = self.parallel.model_state(self.ema.module, main)
        trainer_state = self.trainer_state()
        if not main:
            return None
        meta = {"step": self.step, "train": self.cfg.to_dict(), "data": self.data_info, "arch": self.model.config.arch}
        if self.init_from is not None:
            meta["init_from"] = self.init_from
        try:
            path = save_checkpoint(
                self.out_dir / _checkpoint_name(self.step), self.model, ema=ema, weights=weights,
                trainer_state=trainer_state, meta=meta,
            )
            atomic_write_text(self.out_dir / LATEST, path.name)
        except OSError as err:  # a full disk: the temporary files are gone; say what a rerun resumes from
            intact = latest_checkpoint(self.out_dir)
            kept = f"{intact} (step {intact.name.split('-')[-1].lstrip('0') or 0}) is intact" if intact else \
                "no checkpoint of this run is intact"
            raise OSError(f"checkpoint at step {self.step} not written ({err}); {kept}") from err
        old = sorted(self.out_dir.glob("ckpt-*"))[: -self.cfg.keep_checkpoints]
        for stale in old:
            if stale != path:
                shutil.rmtree(stale)
        try:
            self.plot_losses()
        except OSError:  # the plot is a convenience: a full disk must not stop training after a good checkpoint
            pass
        return path

    def resume(self, path) -> None:
        """Continue exactly where the checkpoint stopped: weights, EMA, optimizer, schedule (the random streams
        follow from the step). The checkpoint may come from a run on any device and any number of processes."""
        config, weights = load_weights(path, "model.safetensors")
        saved = ModelConfig.from_dict(config["model"])
        if saved != self.model.config:
            raise ValueError(f"cannot resume {config['path']}: its model config {saved} differs from {self.model.config}")
        _check_same_codec(config, self.model, f"cannot resume {config['path']}")
        self.parallel.load_model_state(self.model, weights)
        self.parallel.load_model_state(self.ema.module, load_weights(path, "ema.safetensors")[1])
        state = load_trainer_state(path)
        self.parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if hasattr(self.objective, "load_state_dict"):
            if "objective" not in state:
                raise ValueError(f"cannot resume {config['path']} with {type(self.objective).__name__}: the "
                                 f"checkpoint has no state of it (made by another objective)")
            self.objective.load_state_dict(state["objective"])
        self.step = int(state["step"])
        self.init_from = config.get("init_from")

    # -- log --------------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.csv"

    def _truncate_log(self, step: int) -> None:
        """Drop log rows past `step` (written after the checkpoint we resume from, or before a kill that came
        before the first checkpoint), by writing a new log and renaming it over the old one: a kill here leaves
        the old log or the new one, never a truncated one."""
        rows = [r for r in self.read_log() if int(r["step"]) <= step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.log_path, text.getvalue())

    def read_log(self) -> list[dict]:
        return read_log(self.log_path)

    def plot_losses(self) -> None:
        rows = self.read_log()
        if len(rows) < 2:
            return
        steps = [int(r["step"]) for r in rows]
        losses = [float(r["loss"]) for r in rows]
        fig, ax = pyplot().subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, lw=1)
        # an adversarial objective's loss adds the critic's (signed) score: no log scale then
        ax.set(xlabel="step", ylabel="training loss", yscale="log" if min(losses) > 0 else "linear",
               title=f"{self.model.config.arch} training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, self.out_dir / "loss.png", dpi=100)

    # -- loop -------------------------------------------------------------------------------------------------
    def _batch(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        frames, actions = next(batches)
        if actions.max() >= self.model.config.num_actions:  # the null action id is not a valid recorded action
            raise ValueError(f"unknown action id {actions.max().item()} in the dataset: the model knows "
                             f"{self.model.config.num_actions} actions")
        return frames.to(self.device, non_blocking=True), actions.to(self.device, non_blocking=True)

    def train_step(self, batches=None) -> tuple[float, float]:
        """One optimiser step on the global batch; returns (loss averaged over the global batch, grad norm).
        `batches`: an iterator from self.loader (default: a fresh one at the current step)."""
        frames, actions = self._batch(self.loader(self.step) if batches is None else batches)
        self.net.train()
        micro = self.micro_batch_of(self.cfg, frames.shape[0])
        parts = frames.shape[0] // micro
        first = self.procs.rank * parts  # index of this rank's first micro-batch in the global batch
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for j in range(parts):
            # Gradient sync (DDP, FSDP) on the last micro-batch only; each draws its noise from its own stream.
            sync = j == parts - 1
            with contextlib.nullcontext() if sync else self.parallel.no_sync(self.net), \
                    torch.random.fork_rng(devices=[self.device.index] if self.device.type == "cuda" else []):
                torch.manual_seed(stream_seed(self.cfg.seed, self.step, first + j))
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                    loss = self.objective(self.net, frames[j * micro : (j + 1) * micro],
                                          actions[j * micro : (j + 1) * micro])
                (loss / parts).backward()  # DDP / FSDP then average over ranks: the gradient of the global mean
            total += loss.detach() / parts
        if self.procs.world > 1:
            torch.distributed.all_reduce(total)
            total /= self.procs.world
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {total.item()} at step {self.step + 1}; lower the learning rate")
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor (the norm over all shards)
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return total.item(), float(grad_norm)

    def _agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any (a time limit must stop all processes at the same step)."""
        if self.procs.world == 1:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def run(self, progress: bool = True, time_limit: float | None = None) -> list[float]:
        """Train until cfg.steps (or until `time_limit` seconds have passed or a stop is requested, see
        StopRequests: then checkpoint and stop); returns the losses of the steps run by this call."""
        began = time.perf_counter()
        main = self.procs.main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir)
            self._truncate_log(self.step)  # rows past the step we start from come from a run that did not finish
        progress = progress and main
        losses = []
        if time_limit is None:
            bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc="train", unit="step")
        else:  # a time budget ends the run: show progress (and time left) against it, not against cfg.steps
            bar = tqdm(total=round(time_limit), disable=not progress, desc="train", unit="s",
                       bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]")
        batches = self.loader(self.step)
        with open(self.log_path, "a", newline="") if main else contextlib.nullcontext() as log, \
                StopRequests() as stop:
            writer = csv.DictWriter(log, LOG_FIELDS) if main else None
            while self.step < self.cfg.steps:
                start = time.perf_counter()
                loss, grad_norm = self.train_step(batches)
                losses.append(loss)
                if main and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                    lr = self.scheduler.get_last_lr()[0]
                    writer.writerow(dict(step=self.step, loss=f"{loss:.6f}", lr=f"{lr:.3e}",
                                         grad_norm=f"{grad_norm:.4f}", seconds=f"{time.perf_counter() - start:.4f}"))
                    log.flush()  # a kill loses at most the row being written (read_log skips it)
                    bar.set_postfix(step=self.step, loss=f"{loss:.4f}")
                elapsed = time.perf_counter() - began
                bar.update(1 if time_limit is None else min(elapsed, bar.total) - bar.n)
                # every rank stops at the same step (one scalar all-reduce per step under torchrun)
                stopping = self._agree((time_limit is not None and elapsed > time_limit) or stop.requested)
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or stopping:
                    if main:
                        os.fsync(log.fileno())  # the rows up to a checkpoint outlive a power cut with it
                    self.save()  # on every rank: FSDP gathers the shards
                    _barrier(self.procs)
                if stopping:
                    break
        del batches  # stops the loader's worker processes
        bar.close()
        return losses


class StopRequests:
    """While active, SIGTERM (a scheduler's preemption, `kill PID`) or a first Ctrl-C asks the run to stop rather
    than killing it: the step under way finishes, a checkpoint is written and `run` returns, so the rerun of the same
    command resumes where it stopped. A second Ctrl-C interrupts at once. Outside the main thread (where Python
    cannot install handlers) it changes nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step, with a checkpoint", file=sys.stderr)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGTERM and SIGINT. A scheduler's preemption (Slurm signals every process of
    the job), `pkill -f` or Ctrl-C in a terminal reach the workers too; a worker they killed would crash the run
    instead of letting StopRequests finish the step and write the checkpoint. The workers end with the loader."""
    for sig in StopRequests.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def start_record(path) -> dict:
    """What a run started from checkpoint `path` records of it: its identity (path, step, the weights file it
    loaded and its sha256) and, nested, what that checkpoint itself started from: the chain of runs behind the
    weights (their steps add up to the model's total)."""
    return {**checkpoint_identity(path), "init_from": read_config(path).get("init_from")}


def train(
    model_config: ModelConfig,
    dataset,
    out_dir,
    cfg: TrainConfig,
    *,
    resume: bool = True,
    init_from=None,
    data_info: dict | None = None,
    progress: bool = True,
    time_limit: float | None = None,
    device: str | torch.device = "cpu",
    workers: int = 0,
    parallel: str | SingleProcess = "ddp",
) -> Trainer:
    """Build (or resume) a model and train it on `device`. `init_from`: a checkpoint whose weights start a new run.
    Under torchrun (WORLD_SIZE > 1) it joins the process group (gloo on a CPU, nccl on CUDA) and trains
    data-parallel with `parallel` ("ddp", or "fsdp" to shard model, optimiser state and EMA over the ranks);
    `workers`: data loader worker processes per rank."""
    procs = Processes.from_env()
    strategy(parallel, procs.world)  # an unknown name fails before the process group starts
    if procs.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(procs.device(device))
        torch.distributed.init_process_group(backend)
        # kept for later train() calls of this process (joining a group again after destroying it can hang)
        atexit.register(torch.distributed.destroy_process_group)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(model_config)
    trainer = Trainer(model, dataset, out_dir, cfg, data_info, device=device, workers=workers, procs=procs,
                      parallel=parallel)
    if procs.main and Path(out_dir).exists():
        remove_stale_temporaries(out_dir)  # before any rank looks for a checkpoint: it may put one back
    _barrier(procs)
    previous = check_resumable(out_dir) if resume and Path(out_dir).exists() else None
    if previous is not None:
        trainer.resume(previous)
    elif init_from is not None:
        source = load_model(init_from)
        # the same weights may be trained on with another prediction or other inference settings
        given = {k: getattr(model_config, k) for k in ("prediction", "history_noise", *SAMPLER_DEFAULTS)}
        if source.config.replace(**given) != model_config:
            raise ValueError(f"--init-from {init_from}: its model config {source.config} differs from "
                             f"{model_config}")
        if model_codec(source) is not None:
            _check_same_codec({"codec": codec_record(source.codec)[0]}, trainer.model, f"--init-from {init_from}")
        trainer.parallel.load_model_state(trainer.model, source.state_dict())
        trainer.parallel.load_model_state(trainer.ema.module, source.state_dict())
        trainer.init_from = start_record(init_from)
    trainer.run(progress, time_limit)
    return trainer
