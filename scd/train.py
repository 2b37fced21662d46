"""One training loop for both models: an objective (objectives.py: flow matching with teacher forcing, or rollout
training), AdamW, warm-up and optional cosine decay, EMA, bf16 autocast, gradient clipping, atomic checkpoints and
exact resumption."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    LATEST,
    check_resumable,
    latest_checkpoint,
    load_model,
    load_trainer_state,
    load_weights,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import ModelConfig
from .fileio import atomic_write, atomic_write_text
from .flow import FlowConfig
from .models import Surgery, WorldModel, build_model
from .objectives import FlowMatching, RolloutTraining

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
        if self.rollout_steps and self.surgery is not None:
            problems.append("rollout training does not combine with a surgery")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def objective(self):
        """The training objective these options describe."""
        if self.rollout_steps:
            return RolloutTraining(self.flow, self.rollout_steps, self.rollout_context)
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


class Trainer:
    """Trains `model` on a clip dataset whose items are (frames (F, C, H, W) in [-1, 1], actions (F,))."""

    def __init__(self, model: WorldModel, dataset, out_dir, cfg: TrainConfig, data_info: dict | None = None,
                 objective=None):
        if len(dataset) == 0:
            raise ValueError("the training dataset has no clips")
        frames, actions = dataset[0]
        if frames.shape[0] != cfg.clip_len:
            raise ValueError(f"dataset clips have {frames.shape[0]} frames, the training config says {cfg.clip_len}")
        model.check_frames(frames[None], "dataset frames")
        model.check_actions(actions[None], (1, cfg.clip_len))
        model.check_surgery(cfg.surgery)
        data_actions = getattr(dataset, "num_actions", None)
        if data_actions is not None and data_actions > model.config.num_actions:
            raise ValueError(
                f"the dataset has {data_actions} actions but the model knows {model.config.num_actions}"
            )
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.objective = objective or cfg.objective()  # objective(model, frames, actions) -> loss
        self.out_dir = Path(out_dir)
        self.data_info = data_info or {}
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_factor)
        self.data_rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    # -- state ------------------------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> Path:
        meta = {"step": self.step, "train": self.cfg.to_dict(), "data": self.data_info, "arch": self.model.config.arch}
        try:
            path = save_checkpoint(
                self.out_dir / _checkpoint_name(self.step), self.model, ema=self.ema,
                trainer_state=self.trainer_state(), meta=meta,
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
        """Continue exactly where the checkpoint stopped: weights, EMA, optimizer, schedule, RNG states."""
        config, weights = load_weights(path, "model.safetensors")
        saved = ModelConfig.from_dict(config["model"])
        if saved != self.model.config:
            raise ValueError(f"cannot resume {config['path']}: its model config {saved} differs from {self.model.config}")
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(load_weights(path, "ema.safetensors")[1])
        state = load_trainer_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r["step"]) for r in rows]
        losses = [float(r["loss"]) for r in rows]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, lw=1)
        ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log",
               title=f"{self.model.config.arch} training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(self.out_dir / "loss.png", lambda f: fig.savefig(f, dpi=100, format="png"))
        plt.close(fig)

    # -- loop -------------------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.dataset), (self.cfg.batch,), generator=self.data_rng)
        frames, actions = zip(*(self.dataset[int(i)] for i in idx))
        actions = torch.stack(actions)
        if actions.max() >= self.model.config.num_actions:  # the null action id is not a valid recorded action
            raise ValueError(f"unknown action id {actions.max().item()} in the dataset: the model knows "
                             f"{self.model.config.num_actions} actions")
        device = self.model.device
        return torch.stack(frames).to(device), actions.to(device)

    def train_step(self) -> tuple[float, float]:
        frames, actions = self.next_batch()
        self.model.train()
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            loss = self.objective(self.model, frames, actions)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step + 1}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        # EMA with a warm-up of its decay, so short runs are not dominated by the initial weights.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - decay)
        return loss.item(), float(grad_norm)

    def run(self, progress: bool = True, time_limit: float | None = None) -> list[float]:
        """Train until cfg.steps (or until `time_limit` seconds have passed, then checkpoint and stop);
        returns the losses of the steps run by this call."""
        began = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        self._truncate_log(self.step)  # rows past the step we start from were written by a run that did not finish
        losses = []
        if time_limit is None:
            bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc="train", unit="step")
        else:  # a time budget ends the run: show progress (and time left) against it, not against cfg.steps
            bar = tqdm(total=round(time_limit), disable=not progress, desc="train", unit="s",
                       bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]")
        with open(self.log_path, "a", newline="") as log:
            writer = csv.DictWriter(log, LOG_FIELDS)
            while self.step < self.cfg.steps:
                start = time.perf_counter()
                loss, grad_norm = self.train_step()
                losses.append(loss)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    lr = self.scheduler.get_last_lr()[0]
                    writer.writerow(dict(step=self.step, loss=f"{loss:.6f}", lr=f"{lr:.3e}",
                                         grad_norm=f"{grad_norm:.4f}", seconds=f"{time.perf_counter() - start:.4f}"))
                    log.flush()  # a kill loses at most the row being written (read_log skips it)
                    bar.set_postfix(step=self.step, loss=f"{loss:.4f}")
                elapsed = time.perf_counter() - began
                bar.update(1 if time_limit is None else min(elapsed, bar.total) - bar.n)
                out_of_time = time_limit is not None and elapsed > time_limit
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or out_of_time:
                    os.fsync(log.fileno())  # the rows up to a checkpoint outlive a power cut with it
                    self.save()
                if out_of_time:
                    break
        bar.close()
        return losses


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
) -> Trainer:
    """Build (or resume) a model and train it. `init_from`: a checkpoint whose weights start a new run."""
    torch.manual_seed(cfg.seed)
    model = build_model(model_config)
    trainer = Trainer(model, dataset, out_dir, cfg, data_info)
    if Path(out_dir).exists():
        remove_stale_temporaries(out_dir)
    previous = check_resumable(out_dir) if resume and Path(out_dir).exists() else None
    if previous is not None:
        trainer.resume(previous)
    elif init_from is not None:
        source = load_model(init_from)
        if source.config != model_config:
            raise ValueError(f"--init-from {init_from}: its model config {source.config} differs from {model_config}")
        model.load_state_dict(source.state_dict())
        trainer.ema.load_state_dict(source.state_dict())
    trainer.run(progress, time_limit)
    return trainer
