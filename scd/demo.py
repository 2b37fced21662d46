"""`scd demo`: record fresh Crafter episodes, fine-tune the shipped Crafter SCD on them for a time budget, then roll
out held-out episodes with the shipped and the fine-tuned model beside the ground truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, load_model, rollout_window
from .config import SHIPPED_MODELS, ModelConfig
from .data.record import record
from .data.store import ClipDataset, VideoStore
from .flow import FlowConfig
from .metrics import psnr
from .play.engine import fast_bf16
from .sampling import generate
from .train import TrainConfig, train
from .video import rollout_video, write_video

MIN_STEPS = 50  # fewer fine-tuning steps than this barely move the shipped model


def demo(out: str | Path, minutes: float = 5.0, episodes: int = 10, held_out: int = 2, length: int = 150,
         seed: int = 7, lr: float = TrainConfig.lr, context: int = 4, frames: int = 20, steps: int = 10,
         fps: int = 8) -> dict:
    """Record `episodes` Crafter episodes of `length` frames into out/crafter (once), fine-tune the shipped SCD on
    all but the last `held_out` for `minutes` into out/run (a rerun resumes), then roll out the held-out ones from
    `context` real frames for `frames` frames with `steps` denoising steps into out/demo.mp4. Returns the video's
    path, the fine-tuning steps, the episodes shown and the mean held-out PSNR of each model."""
    out = Path(out)
    data = out / "crafter"
    if not (data / "meta.json").exists():
        print(f"recording {episodes} fresh Crafter episodes of {length} frames (seed {seed}) -> {data}")
        record("crafter", data, episodes=episodes, steps=length, seed=seed, overwrite=True)
    store = VideoStore(data)
    shown = list(range(store.num_episodes - held_out, store.num_episodes))
    if held_out >= store.num_episodes:
        raise ValueError(f"--held-out {held_out} leaves no episode of {store.num_episodes} to train on")
    shipped, info = load_checkpoint(SHIPPED_MODELS["crafter-scd"])
    clip_len = info["train"]["clip_len"]
    clips = ClipDataset(store, clip_len, episodes=range(store.num_episodes - held_out), codec=shipped.codec)
    run = out / "run"
    print(f"fine-tuning the shipped Crafter SCD for {minutes:g} min on {len(clips)} clips of {clip_len} frames "
          f"(episodes 0-{shown[0] - 1}; {shown} held out) -> {run}")
    cfg = TrainConfig(steps=1_000_000, batch=8, clip_len=clip_len, lr=lr, warmup=10, ckpt_every=100,
                      bf16=fast_bf16("cpu"), flow=FlowConfig.from_dict(info["train"]["flow"]))  # time ends the run
    trainer = train(ModelConfig.from_dict(info["model"]), clips, run, cfg, init_from=SHIPPED_MODELS["crafter-scd"],
                    data_info=clips.description(), time_limit=60 * minutes)
    if trainer.step < MIN_STEPS:
        print(f"warning: only {trainer.step} fine-tuning steps have run ({minutes:g} min on this machine; "
              f"{MIN_STEPS} or more move the model): the fine-tuned model is still close to the shipped one; "
              "rerun with more --minutes (it resumes)", file=sys.stderr)
    tuned = load_model(run)

    # Ground truth: held-out episodes, driven by their recorded actions.
    total = context + frames
    lengths = store.episode_lengths
    shown = [e for e in shown if lengths[e] >= total]
    if not shown:
        raise ValueError(f"no held-out episode has {total} frames: lower --frames or raise --length")
    columns, scores, captions = {}, {"shipped": [], "fine-tuned": []}, []
    for e in shown:
        recorded, recorded_actions = store.episode(e)
        truth = torch.from_numpy(np.array(recorded[:total]))  # uint8 (total, H, W, 3): each model's codec encodes it
        actions = torch.from_numpy(np.array(recorded_actions[:total], dtype=np.int64))[None]
        columns.setdefault("ground truth", []).append(truth.numpy())
        captions += [f"episode {e}: {'context' if i < context else 'generated'} {i + 1}/{total}" for i in range(total)]
        for name, model in (("shipped", shipped), ("fine-tuned", tuned)):
            pred = generate(model, truth[None, :context], actions, steps=steps, seed=0,
                            window=rollout_window(model.config, info))
            pixels = model.codec.decode_pixels(pred[0, 0])  # (frames, 3, H, W) in [-1, 1]
            scores[name].append(float(psnr(pixels[None], model.codec.as_pixels(truth[None, context:])).mean()))
            columns.setdefault(name, []).append(np.concatenate([truth[:context].numpy(),
                                                                model.codec.decode(pred[0, 0]).numpy()]))
    given = [i % total < context for i in range(len(captions))]
    video = rollout_video({k: np.concatenate(v) for k, v in columns.items()}, captions, given)
    path = write_video(out / "demo.mp4", video, fps=fps)
    return {"video": path, "steps": trainer.step, "episodes": shown,
            "psnr": {name: float(np.mean(values)) for name, values in scores.items()}}
