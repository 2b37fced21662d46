"""Training the frame autoencoder: pixel L1 (or MSE) + LPIPS (+ KL for a KL bottleneck), AdamW with the world-model
trainer's schedule, atomic checkpoints that are usable codecs, exact resumption, a progress bar, log.csv and
loss.png. Every checkpoint re-measures the latent shift and scale on training frames, so any of them loads with
load_codec; with validation data it also records PSNR and SSIM on it (config.json "val")."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from scd.checkpoint import (LATEST, check_resumable, latest_checkpoint, load_trainer_state, load_weights,
                            remove_stale_temporaries)
from scd.data.store import VideoStore, frames_to_model
from scd.fileio import atomic_write, atomic_write_text
from scd.metrics import LPIPS
from scd.train import Processes, StepBatches, StopRequests, TrainConfig, read_log, stream_seed

from .autoencoder import CODEC_PRESETS, DEFAULT_PRESET, AutoencoderCodec, AutoencoderConfig
from .base import CODEC_FORMAT, load_codec
from .evaluate import evaluate_codec
from .frames import FrameSet

LOG_FIELDS = ["step", "loss", "pixel", "lpips", "kl", "lr", "grad_norm", "seconds"]


@dataclass(frozen=True)
class CodecTrainConfig:
    steps: int = 20000
    batch: int = 16  # frames per step
    lr: float = 5e-4
    warmup: int = 200  # linear warm-up steps, then constant (lr_min None) or cosine decay to lr_min at `steps`
    lr_min: float | None = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    pixel_loss: Literal["l1", "mse"] = "l1"
    lpips_weight: float = 0.1  # LPIPS (AlexNet) term; 0: none (needed below 32x32 pixels)
    kl_weight: float = 1e-4  # KL bottleneck only: KL per latent value to N(0, 1)
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 20
    scale_frames: int = 1024  # training frames whose latents set the codec's shift and scale at each checkpoint
    val_frames: int = 256  # validation frames scored at each checkpoint (when validation data is given)
    seed: int = 0

    lr_factor = TrainConfig.lr_factor  # the world-model trainer's schedule (it reads steps, warmup, lr, lr_min)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        problems = [f"{name} must be >= {low}, got {getattr(self, name)}"
                    for name, low in [("steps", 1), ("batch", 1), ("warmup", 0), ("ckpt_every", 1),
                                      ("keep_checkpoints", 1), ("log_every", 1), ("scale_frames", 2),
                                      ("val_frames", 1), ("grad_clip", 0), ("weight_decay", 0),
                                      ("lpips_weight", 0), ("kl_weight", 0)]
                    if getattr(self, name) < low]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.lr_min is not None and not 0 <= self.lr_min <= self.lr:
            problems.append(f"lr_min must be in [0, lr={self.lr}], got {self.lr_min}")
        if self.pixel_loss not in ("l1", "mse"):
            problems.append(f"pixel_loss must be 'l1' or 'mse', got {self.pixel_loss!r}")
        if problems:
            raise ValueError("invalid codec training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CodecTrainer:
    """Trains an AutoencoderCodec on the frames of a FrameSet into `out_dir` (ckpt-<step> codec directories,
    `latest`, log.csv, loss.png). Frame indices of step s come from a stream seeded by (seed, s) and the KL
    noise from one seeded by (seed, s, 0), so a resumed run repeats an uninterrupted one exactly."""

    def __init__(self, codec: AutoencoderCodec, frames: FrameSet, out_dir, cfg: CodecTrainConfig, *,
                 val: FrameSet | None = None, device: str | torch.device = "cpu"):
        codec.check_pixel_shape(frames.pixel_shape, "the training data")
        if val is not None:
            codec.check_pixel_shape(val.pixel_shape, "the validation data")
        if cfg.lpips_weight and min(frames.pixel_shape[:2]) < 32:
            raise ValueError(f"the LPIPS loss needs frames of at least 32x32 pixels, the data has "
                             f"{frames.pixel_shape[0]}x{frames.pixel_shape[1]}: set lpips_weight=0")
        self.device = Processes().device(device)
        self.codec, self.frames, self.val, self.cfg = codec.to(self.device), frames, val, cfg
        self.perceptual = LPIPS("alex").to(self.device) if cfg.lpips_weight else None
        self.optimizer = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_factor)
        self.out_dir = Path(out_dir)
        self.step = 0
        self.last_val: dict | None = None  # the newest checkpoint's validation scores
        self.init_from: dict | None = None  # {"path", "sha256"} of the codec whose weights started the run

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of uint8 frames (N, H, W, 3) and its parts."""
        x = frames_to_model(frames).to(self.device)  # (N, 3, H, W) in [-1, 1]
        recon, kl = self.codec.reconstruct(x)
        error = recon - x
        pixel = error.abs().mean() if self.cfg.pixel_loss == "l1" else error.square().mean()
        perceptual = self.perceptual(recon, x).mean() if self.perceptual is not None else pixel.new_zeros(())
        loss = pixel + self.cfg.lpips_weight * perceptual + self.cfg.kl_weight * kl
        return loss, {"pixel": pixel.item(), "lpips": perceptual.item(), "kl": kl.item()}

    def train_step(self, indices: list[int]) -> tuple[float, dict[str, float], float]:
        """One optimiser step on the frames at `indices`: (loss, its parts, gradient norm)."""
        self.codec.train()
        devices = [self.device.index] if self.device.type == "cuda" else []  # Processes.device gives cuda:N
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(stream_seed(self.cfg.seed, self.step, 0))
            loss, parts = self.loss(self.frames.batch(indices))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"codec loss became {loss.item()} at step {self.step + 1}; lower the lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.codec.parameters(), clip))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item(), parts, grad_norm

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Measure the latent shift and scale, score the validation frames, write ckpt-<step> and prune."""
        self.codec.eval()
        batches = self.frames.batches(self.frames.spread(self.cfg.scale_frames), 64)
        self.codec.fit_scale(frames_to_model(b).to(self.device) for b in batches)
        meta = {"step": self.step, "train": self.cfg.to_dict(), "data": self.frames.describe()}
        if self.init_from is not None:
            meta["init_from"] = self.init_from
        if self.val is not None:
            meta["val"] = evaluate_codec(self.codec, self.val, frames=self.cfg.val_frames, perceptual=False)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        try:
            path = self.codec.save(self.out_dir / f"ckpt-{self.step:07d}", meta, state)
            atomic_write_text(self.out_dir / LATEST, path.name)
        except OSError as err:  # a full disk: the temporary files are gone; say what a rerun resumes from
            intact = latest_checkpoint(self.out_dir)
            raise OSError(f"codec checkpoint at step {self.step} not written ({err}); "
                          f"{intact or 'no checkpoint of this run'} is intact") from err
        for stale in sorted(self.out_dir.glob("ckpt-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(stale)
        with contextlib.suppress(OSError):  # the plot is a convenience
            self.plot_losses()
        self.last_val = meta.get("val")
        return path

    def resume(self, path) -> None:
        """Continue exactly where checkpoint `path` stopped: weights, optimizer, schedule and step."""
        config, state = load_weights(path, "model.safetensors", CODEC_FORMAT)
        saved = config.get("codec", {})
        mine = {k: v for k, v in self.codec.to_dict().items() if k not in ("path", "sha256")}
        if saved != mine:
            raise ValueError(f"cannot resume {config['path']}: it trains {saved}, this run {mine}")
        self.codec.load_state_dict(state)
        trainer = load_trainer_state(path, CODEC_FORMAT)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.step = int(trainer["step"])
        self.init_from = config.get("init_from")

    # -- log --------------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.csv"

    def read_log(self) -> list[dict]:
        return read_log(self.log_path)

    def _truncate_log(self) -> None:
        """Keep the rows up to the current step (later ones come from a run that did not reach a checkpoint),
        written to a new file renamed over the old one."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in self.read_log() if int(r["step"]) <= self.step)
        atomic_write_text(self.log_path, text.getvalue())

    def plot_losses(self) -> None:
        rows = self.read_log()
        if len(rows) < 2:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [int(r["step"]) for r in rows]
        for name in ("loss", "pixel", "lpips"):
            ax.plot(steps, [max(float(r[name]), 1e-8) for r in rows], lw=1, label=name)
        ax.set(xlabel="step", yscale="log", title="codec training loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(self.out_dir / "loss.png", lambda f: fig.savefig(f, dpi=100, format="png"))
        plt.close(fig)

    # -- loop -------------------------------------------------------------------------------------------------
    def run(self, progress: bool = True, time_limit: float | None = None) -> list[float]:
        """Train until cfg.steps, or until `time_limit` seconds have passed or a stop is requested (StopRequests):
        then checkpoint and stop; returns the losses of the steps run by this call."""
        began = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_log()
        losses = []
        if time_limit is None:
            bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc="codec", unit="step")
        else:  # a time budget ends the run: show progress against it
            bar = tqdm(total=round(time_limit), disable=not progress, desc="codec", unit="s",
                       bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]")
        batches = iter(StepBatches(len(self.frames), self.cfg.batch, self.cfg.seed, self.step))
        with open(self.log_path, "a", newline="") as log, StopRequests() as stop:
            writer = csv.DictWriter(log, LOG_FIELDS)
            while self.step < self.cfg.steps:
                start = time.perf_counter()
                loss, parts, grad_norm = self.train_step(next(batches))
                losses.append(loss)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    writer.writerow(dict(step=self.step, loss=f"{loss:.6f}", lr=f"{self.scheduler.get_last_lr()[0]:.3e}",
                                         grad_norm=f"{grad_norm:.4f}", seconds=f"{time.perf_counter() - start:.4f}",
                                         **{k: f"{v:.6f}" for k, v in parts.items()}))
                    log.flush()  # a kill loses at most the row being written (read_log skips it)
                    bar.set_postfix(step=self.step, loss=f"{loss:.4f}")
                elapsed = time.perf_counter() - began
                bar.update(1 if time_limit is None else min(elapsed, bar.total) - bar.n)
                stopping = (time_limit is not None and elapsed > time_limit) or stop.requested
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or stopping:
                    os.fsync(log.fileno())
                    self.save()
                    if self.last_val:
                        bar.set_postfix(step=self.step, loss=f"{loss:.4f}", val_psnr=f"{self.last_val['psnr']:.2f}")
                if stopping:
                    break
        bar.close()
        return losses


def train_codec(data: str | os.PathLike | VideoStore | FrameSet, out_dir, cfg: CodecTrainConfig = CodecTrainConfig(),
                architecture: str | AutoencoderConfig | None = None, *, val_data=None, resume: bool = True,
                init_from=None, progress: bool = True, time_limit: float | None = None,
                device: str | torch.device = "cpu") -> CodecTrainer:
    """Train (or resume: rerun the same call) an autoencoder codec on the frames of `data` (a data set directory,
    or a FrameSet to hold out episodes) into `out_dir`. `architecture`: a name of CODEC_PRESETS or a config
    (default: DEFAULT_PRESET, or the architecture of `init_from`). `init_from`: a trained autoencoder codec (what
    load_codec takes: a codec or run directory, "crafter") whose weights start a new run with a fresh optimiser and
    schedule; a run in `out_dir` that has checkpoints resumes instead. `val_data`: a data set (e.g. a benchmark
    recording) scored at each checkpoint. load_codec(out_dir) then gives the newest checkpoint as a codec."""
    frames = data if isinstance(data, FrameSet) else FrameSet(data)
    val = None if val_data is None else val_data if isinstance(val_data, FrameSet) else FrameSet(val_data)
    source = None if init_from is None else _initial_codec(init_from, frames.pixel_shape)
    if isinstance(architecture, str):
        if architecture not in CODEC_PRESETS:
            raise ValueError(f"unknown codec architecture {architecture!r}; choose one of {', '.join(CODEC_PRESETS)}")
        architecture = CODEC_PRESETS[architecture]
    if source is not None and architecture not in (None, source.config):
        raise ValueError(f"init_from {init_from} is a {_named(source.config)} codec, not the {_named(architecture)} "
                         "asked for (leave the architecture out to keep the codec's)")
    architecture = architecture or (source.config if source is not None else CODEC_PRESETS[DEFAULT_PRESET])
    torch.manual_seed(cfg.seed)
    trainer = CodecTrainer(AutoencoderCodec(architecture, frames.pixel_shape), frames, out_dir, cfg, val=val,
                           device=device)
    previous = None
    if Path(out_dir).exists():
        remove_stale_temporaries(out_dir)  # before looking for a checkpoint: it may put one back
        previous = check_resumable(out_dir) if resume else None
    if previous is not None:
        trainer.resume(previous)
    elif source is not None:
        trainer.codec.load_state_dict(source.state_dict())  # weights, latent shift and scale (refitted at saves)
        trainer.init_from = source.source
    trainer.run(progress, time_limit)
    return trainer


def _named(config: AutoencoderConfig) -> str:
    """A preset's name, or the config itself."""
    return next((name for name, preset in CODEC_PRESETS.items() if preset == config), str(config))


def _initial_codec(spec, pixel_shape) -> AutoencoderCodec:
    """The trained autoencoder a run starts from (load_codec's errors name a missing or corrupt one)."""
    codec = load_codec(spec, pixel_shape=pixel_shape)
    if not isinstance(codec, AutoencoderCodec):
        raise ValueError(f"init_from {spec} is a {codec.describe()}; only an autoencoder codec can be trained on")
    return codec
