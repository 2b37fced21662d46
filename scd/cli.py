"""The `scd` command.

Core commands (info, train, demo, generate, export) live here; other areas define theirs in their own module's
`add_parser(subparsers)`. Only the command being run is built and imported, so `scd --help` and `scd --version`
start without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .cli_options import (Parser, add_device_option, add_option, add_sampler_options, add_surgery_arguments,
                          at_least, finite, positive, surgery_from_args)

# command -> (one-line help for `scd --help`, "module:function" that adds its full parser), in `scd --help` order
COMMANDS = {
    "info": ("parameters and block passes per frame of a preset or checkpoint", "scd.cli:add_info_parser"),
    "train": ("train SCD or the Causal DiT on a recorded data set", "scd.cli:add_train_parser"),
    "demo": ("record fresh Crafter episodes, fine-tune the shipped SCD on them for a few minutes and compare "
             "on held-out ones", "scd.cli:add_demo_parser"),
    "generate": ("roll out a model from real context frames and write a video", "scd.cli:add_generate_parser"),
    "export": ("a lean copy of a checkpoint for shipping: EMA weights + config", "scd.cli:add_export_parser"),
    "data": ("record, import and inspect video datasets", "scd.data.cli:add_parser"),
    "play": ("play a world model in the browser (or --benchmark its speed)", "scd.play.cli:add_parser"),
    "bench": ("streaming speed and memory: SCD vs a Causal DiT of matched size", "scd.bench:add_parser"),
    "eval": ("PSNR/SSIM/LPIPS (best of N) and FVD of rollouts on held-out videos", "scd.evaluate:add_parser"),
    "probe": ("step similarity, PCA, attention mass and leave-one-out of a model", "scd.probe:add_parser"),
    "quality": ("rollout PSNR/SSIM/LPIPS vs ground truth on a few held-out clips (optionally under a surgery) "
                "and s/frame", "scd.quality:add_parser"),
    "convert": ("build an SCD from a trained Causal DiT (encoder l, decoder a+b blocks)", "scd.convert:add_parser"),
    "weights": ("check or install the LPIPS and I3D (FVD) weights that `scd eval` needs", "scd.metrics.cli:add_parser"),
}


# -- scd info ------------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    import torch

    from .checkpoint import load_model
    from .config import PRESETS, SHIPPED_MODELS, get_preset
    from .models import build_model

    names = list(PRESETS) if args.target.lower() == "all" else [args.target]
    rows, models = [], []
    for name in names:
        if name.lower() in PRESETS:
            with torch.device("meta"):  # counts parameters without allocating the big presets
                model = build_model(get_preset(name))
            name = name.lower()
        elif name in SHIPPED_MODELS or Path(name).exists():
            model = load_model(name)
        else:
            raise ValueError(f"unknown preset or checkpoint {name!r}: presets are {', '.join(PRESETS)} (any case); "
                             f"shipped models {', '.join(SHIPPED_MODELS)}; or give a checkpoint directory")
        rows.append({"name": name, **model.describe(args.steps)})
        models.append(model)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'arch':<10} {'blocks':>6} {'hidden':>6} {'params':>9} {'tokens/F':>8} "
          f"{'BP/frame (S=' + str(args.steps) + ')':>18}")
    for r, model in zip(rows, models):
        print(f"{r['name']:<12} {r['arch']:<10} {r['blocks']:>6} {r['hidden']:>6} {r['params'] / 1e6:>8.1f}M "
              f"{r['tokens_per_frame']:>8} {r['block_passes_per_frame']:>8} = {model.block_pass_formula(args.steps)}")
    for note in dict.fromkeys(m.cost_note for m in models if m.cost_note):  # each once, in order
        print(note)
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help=COMMANDS["info"][0])
    p.add_argument("target", help="a preset name (any case, e.g. DiT-B), 'all', a shipped model name "
                                  "(crafter-scd, crafter-dit) or a checkpoint path")
    p.add_argument("--steps", type=at_least(1), default=50, help="denoising steps S (default: 50, as in Tab. 5)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_info)


# -- scd train -----------------------------------------------------------------------------------------------
def _check_out_dir(path: str, option: str = "--out") -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory")


def cmd_train(args) -> int:
    from .checkpoint import read_config
    from .config import ModelConfig, get_preset
    from .data.store import ClipDataset
    from .flow import FlowConfig
    from .train import TrainConfig, train

    _check_out_dir(args.out)
    data = ClipDataset(args.data, args.clip_len)
    if args.init_from:
        model_config = ModelConfig.from_dict(read_config(args.init_from)["model"])
    else:
        model_config = get_preset(args.preset).replace(num_actions=data.num_actions, frame_shape=data.frame_shape)
        if args.fusion and model_config.arch == "scd":
            model_config = model_config.replace(fusion=args.fusion)
        inference_noise = args.history_noise / 2 if args.history_noise_inference is None else args.history_noise_inference
        model_config = model_config.replace(prediction=args.prediction, history_noise=inference_noise)
    flow = FlowConfig(timesteps=args.timesteps, shift=args.shift, K=args.K, context_noise=args.eta,
                      action_dropout=args.action_dropout, encoder_t_min=args.encoder_t_min,
                      history_noise=args.history_noise)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, clip_len=args.clip_len, lr=args.lr, warmup=args.warmup,
                      lr_min=args.lr_min, weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema,
                      bf16=args.bf16, ckpt_every=args.ckpt_every, log_every=args.log_every, seed=args.seed, flow=flow,
                      surgery=surgery_from_args(args), rollout_steps=args.rollout_steps,
                      rollout_context=args.rollout_context, micro_batch=args.micro_batch)
    main_process = int(os.environ.get("RANK", 0)) == 0  # under torchrun only rank 0 speaks
    store = data.store
    data_info = {"path": str(Path(args.data).resolve()), "source": store.meta.source,
                 "action_names": list(store.action_names), "fps": store.meta.fps, "clips": len(data)}
    world = int(os.environ.get("WORLD_SIZE", 1))
    if main_process:
        print(f"training {model_config.arch} ({args.init_from or args.preset}) on {len(data)} clips of "
              f"{args.clip_len} frames from {args.data} -> {args.out} on {args.device}"
              + (f" x {world} processes ({args.parallel})" if world > 1 else ""))
    start = time.perf_counter()
    trainer = train(model_config, data, args.out, cfg, resume=not args.no_resume, init_from=args.init_from,
                    data_info=data_info, time_limit=args.time_limit, device=args.device, workers=args.workers,
                    parallel=args.parallel)
    if main_process:
        print(f"done: step {trainer.step}, {time.perf_counter() - start:.0f} s; checkpoints and log.csv in {args.out}")
    return 0


def add_train_parser(sub) -> None:
    from .config import PREDICTIONS, ModelConfig
    from .flow import FlowConfig
    from .train import TrainConfig

    p = sub.add_parser("train", help=COMMANDS["train"][0])
    p.add_argument("--preset", default="scd-s", help="model preset, any case (see `scd info all`; default: scd-s)")
    p.add_argument("--data", required=True, help="data set directory (from `scd data record`)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.csv, loss.png")
    add_option(p, "--steps", TrainConfig, "steps", "optimizer steps")
    add_option(p, "--batch", TrainConfig, "batch", "clips per step (the global batch: under torchrun each process "
               "draws batch / processes of them)")
    p.add_argument("--micro-batch", type=at_least(1), metavar="M",
                   help="clips per forward pass (gradient accumulation; default: each process's whole share); runs "
                        "with the same --batch and --micro-batch give the same losses on any number of processes")
    add_device_option(p)
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                   help="under torchrun: ddp (DistributedDataParallel, a whole model per process) or fsdp (FSDP2: "
                        "model, optimiser state and EMA sharded over the processes, for the big presets); "
                        "checkpoints are the same either way (default: ddp)")
    p.add_argument("--workers", type=at_least(0), default=2,
                   help="data loader worker processes per training process (default: 2)")
    add_option(p, "--clip-len", TrainConfig, "clip_len", "frames per training clip")
    add_option(p, "--lr", TrainConfig, "lr", "AdamW learning rate", type=positive())
    add_option(p, "--warmup", TrainConfig, "warmup", "linear learning-rate warm-up steps")
    add_option(p, "--lr-min", TrainConfig, "lr_min",
               "cosine decay of the learning rate to this value at --steps (none: constant after the warm-up)",
               type=at_least(0.0, float))
    add_option(p, "--weight-decay", TrainConfig, "weight_decay", "AdamW weight decay")
    add_option(p, "--grad-clip", TrainConfig, "grad_clip", "gradient norm clip (0 = off)")
    add_option(p, "--ema", TrainConfig, "ema_decay", "EMA decay of the weights generation uses")
    add_option(p, "--bf16", TrainConfig, "bf16", "bf16 autocast")
    add_option(p, "--ckpt-every", TrainConfig, "ckpt_every", "steps between checkpoints")
    add_option(p, "--log-every", TrainConfig, "log_every", "steps between log.csv rows")
    add_option(p, "--seed", TrainConfig, "seed", "seed of the weights, the data order and the noise")
    add_option(p, "--K", FlowConfig, "K", "noisy draws per context pass")
    add_option(p, "--eta", FlowConfig, "context_noise", "context noise on c_i (SCD; the paper uses 0.05)")
    add_option(p, "--timesteps", FlowConfig, "timesteps", "flow-time distribution",
               choices=["logit_normal", "uniform"])
    add_option(p, "--shift", FlowConfig, "shift", "timestep shift k")
    add_option(p, "--action-dropout", FlowConfig, "action_dropout", "share of clips with the null action (guidance)")
    add_option(p, "--encoder-t-min", FlowConfig, "encoder_t_min",
               "noisy_current SCD encoders (scd convert) see the current frame at t ~ U(this, 1)")
    p.add_argument("--fusion", choices=["seq_offset", "seq_same", "channel"],
                   help="SCD context fusion (default: the preset's)")
    add_option(p, "--prediction", ModelConfig, "prediction",
               "network output: the velocity (the paper), the clean frame (x-prediction) or the clean frame's change "
               "from the last history frame (starts as copy-last-frame)", choices=list(PREDICTIONS))
    add_option(p, "--history-noise", FlowConfig, "history_noise", "noise augmentation of history frames: each at "
               "a flow time ~ U(0, MAX), given to the network (0 = clean history)", metavar="MAX")
    p.add_argument("--history-noise-inference", type=at_least(0.0, float), metavar="T",
                   help="fixed flow time of history frames at inference (default: MAX / 2)")
    add_option(p, "--rollout-steps", TrainConfig, "rollout_steps",
               "rollout training: history = the model's own S-step samples (0 = teacher forcing)", metavar="S",
               type=at_least(0))
    add_option(p, "--rollout-context", TrainConfig, "rollout_context", "recorded frames before the rollout history",
               type=at_least(1))
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--no-resume", action="store_true", help="do not continue from checkpoints in --out")
    p.add_argument("--time-limit", type=positive(), help="stop (with a checkpoint) after this many seconds")
    add_surgery_arguments(p, training=True)
    p.set_defaults(func=cmd_train)


# -- scd demo ------------------------------------------------------------------------------------------------
DEMO_MIN_STEPS = 50  # fewer fine-tuning steps than this barely move the shipped model


def cmd_demo(args) -> int:
    """Fine-tune the shipped Crafter SCD on fresh recordings for a time budget, then roll out held-out episodes
    with the shipped and the fine-tuned model beside the ground truth."""
    import numpy as np
    import torch

    from .checkpoint import load_checkpoint, load_model
    from .config import SHIPPED_MODELS, ModelConfig
    from .data.record import record
    from .data.store import ClipDataset, VideoStore, frames_to_model, frames_to_uint8
    from .flow import FlowConfig
    from .metrics import psnr
    from .play.engine import fast_bf16
    from .sampling import generate
    from .train import TrainConfig, train
    from .video import CONTEXT_COLOUR, GENERATED_COLOUR, side_by_side, with_captions, write_video

    _check_out_dir(args.out)
    out = Path(args.out)
    data = out / "crafter"
    if not (data / "meta.json").exists():
        print(f"recording {args.episodes} fresh Crafter episodes of {args.length} frames (seed {args.seed}) -> {data}")
        record("crafter", data, episodes=args.episodes, steps=args.length, seed=args.seed, overwrite=True)
    store = VideoStore(data)
    held_out = list(range(store.num_episodes - args.held_out, store.num_episodes))
    if args.held_out >= store.num_episodes:
        raise ValueError(f"--held-out {args.held_out} leaves no episode of {store.num_episodes} to train on")
    shipped, info = load_checkpoint(SHIPPED_MODELS["crafter-scd"])
    clip_len = info["train"]["clip_len"]
    clips = ClipDataset(store, clip_len, episodes=range(store.num_episodes - args.held_out))
    run = out / "run"
    print(f"fine-tuning the shipped Crafter SCD for {args.minutes:g} min on {len(clips)} clips of {clip_len} frames "
          f"(episodes 0-{held_out[0] - 1}; {held_out} held out) -> {run}")
    flow = {k: v for k, v in info["train"]["flow"].items() if k in {f.name for f in dataclasses.fields(FlowConfig)}}
    cfg = TrainConfig(steps=1_000_000, batch=8, clip_len=clip_len, lr=args.lr, warmup=10, ckpt_every=100,
                      bf16=fast_bf16("cpu"), flow=FlowConfig(**flow))  # the time budget ends the run
    data_info = {"path": str(data.resolve()), "source": store.meta.source,
                 "action_names": list(store.action_names), "fps": store.meta.fps, "clips": len(clips)}
    trainer = train(ModelConfig.from_dict(info["model"]), clips, run, cfg, init_from=SHIPPED_MODELS["crafter-scd"],
                    data_info=data_info, time_limit=60 * args.minutes)
    if trainer.step < DEMO_MIN_STEPS:
        print(f"warning: only {trainer.step} fine-tuning steps have run ({args.minutes:g} min on this machine; "
              f"{DEMO_MIN_STEPS} or more move the model): the fine-tuned model is still close to the shipped one; "
              "rerun with more --minutes (it resumes)", file=sys.stderr)
    tuned = load_model(run)

    # Ground truth: held-out episodes, driven by their recorded actions.
    total = args.context + args.frames
    episodes = [e for e in held_out if store.episode_lengths[e] >= total]
    if not episodes:
        raise ValueError(f"no held-out episode has {total} frames: lower --frames or raise --length")
    columns, scores, captions = {}, {"shipped": [], "fine-tuned": []}, []
    for e in episodes:
        frames, actions = store.episode(e)
        truth = frames_to_model(frames[:total])[None]
        acts = torch.from_numpy(np.array(actions[:total], dtype=np.int64))[None]
        columns.setdefault("ground truth", []).append(np.asarray(frames[:total]))
        captions += [f"episode {e}: {'context' if i < args.context else 'generated'} {i + 1}/{total}"
                     for i in range(total)]
        for name, model in (("shipped", shipped), ("fine-tuned", tuned)):
            pred = generate(model, truth[:, : args.context], acts, steps=args.steps, seed=0, window=clip_len - 1)
            pred = pred[0, 0].clamp(-1, 1)
            scores[name].append(float(psnr(pred[None], truth[:, args.context :]).mean()))
            columns.setdefault(name, []).append(frames_to_uint8(torch.cat([truth[0, : args.context], pred])))
    video = side_by_side({k: np.concatenate(v) for k, v in columns.items()})
    colours = [CONTEXT_COLOUR if "context" in caption else GENERATED_COLOUR for caption in captions]
    path = write_video(out / "demo.mp4", with_captions(video, captions, colours), fps=args.fps)
    print(f"held-out PSNR over {len(episodes)} episodes x {args.frames} generated frames: shipped "
          f"{np.mean(scores['shipped']):.2f} dB, fine-tuned for {trainer.step} steps {np.mean(scores['fine-tuned']):.2f} dB")
    print(f"wrote {path}: ground truth | shipped SCD | fine-tuned SCD, {args.context} real context frames then "
          f"{args.frames} generated, per held-out episode")
    return 0


def add_demo_parser(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("demo", help=COMMANDS["demo"][0])
    p.add_argument("--out", default="out/demo", help="folder for the data, the run and the video (default: out/demo)")
    p.add_argument("--minutes", type=positive(), default=5.0, help="fine-tuning time budget (default: 5)")
    p.add_argument("--episodes", type=at_least(2), default=10, help="episodes to record (default: 10)")
    p.add_argument("--held-out", type=at_least(1), default=2, help="last episodes kept for the video (default: 2)")
    p.add_argument("--length", type=at_least(8), default=150, help="frames per recorded episode (default: 150)")
    p.add_argument("--seed", type=at_least(0), default=7, help="recording seed (default: 7)")
    add_option(p, "--lr", TrainConfig, "lr", "fine-tuning learning rate", type=positive())
    p.add_argument("--context", type=at_least(1), default=4, help="real frames each rollout starts from (default: 4)")
    p.add_argument("--frames", type=at_least(1), default=20, help="frames generated per episode (default: 20)")
    p.add_argument("--steps", type=at_least(1), default=10, help="denoising steps S (default: 10)")
    p.add_argument("--fps", type=at_least(1), default=8, help="video frames per second (default: 8)")
    p.set_defaults(func=cmd_demo)


# -- scd generate --------------------------------------------------------------------------------------------
def parse_actions(text: str, num_actions: int, names: list[str] | None = None) -> list[int]:
    """'1,2,2' or 'move_left,noop' -> ids, checked against the model's action set."""
    ids = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit():
            ids.append(int(item))
        elif names and item in names:
            ids.append(names.index(item))
        else:
            known = f" (names: {', '.join(names)})" if names else ""
            raise ValueError(f"unknown action {item!r}: give ids 0..{num_actions - 1}{known}")
        if ids[-1] >= num_actions:
            raise ValueError(f"unknown action id {ids[-1]}: the model knows {num_actions} actions")
    return ids


def _episode(data: str | None, info: dict, episode: int, num_actions: int):
    """(frames uint8 (n, H, W, 3), actions (n,)) of one episode of a data set directory or a context file.

    Without --data: the data set the checkpoint was trained on if it is on this machine, else the shipped
    Crafter context file."""
    from .config import SHIPPED_CONTEXT
    from .data.context import load_context_npz
    from .data.store import VideoStore

    path = data or info.get("data", {}).get("path")
    if data is None and (path is None or not Path(path).exists()):
        path = str(SHIPPED_CONTEXT)
    if Path(path).is_dir():
        store = VideoStore(path)
        count, actions_known = store.num_episodes, store.num_actions
        get = store.episode
    else:
        ctx = load_context_npz(path)
        count, actions_known = ctx.num_episodes, int(ctx.actions.max()) + 1
        get = lambda e: (ctx.frames[e], ctx.actions[e])  # noqa: E731
    if actions_known > num_actions:
        raise ValueError(f"{path} has {actions_known} actions, the model knows {num_actions}")
    if not 0 <= episode < count:
        raise ValueError(f"--episode {episode} out of range: {path} has {count} episodes")
    return get(episode)


def _default_window(window: int | None, info: dict) -> int | None:
    """--window, else the most past frames a training frame saw (clip length - 1), else None (the whole rollout)."""
    clip_len = info.get("train", {}).get("clip_len")
    if window is not None or not clip_len:
        return window
    return max(clip_len - 1, 1)


def cmd_generate(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .checkpoint import load_checkpoint
    from .config import SHIPPED_MODELS
    from .data.store import frames_to_model, frames_to_uint8
    from .sampling import Guidance, rollout
    from .surgery import operated
    from .video import CONTEXT_COLOUR, GENERATED_COLOUR, side_by_side, with_captions, write_video

    if Path(args.out).suffix not in (".mp4", ".gif"):
        raise ValueError(f"unsupported video format {Path(args.out).suffix!r} of --out {args.out}: use .mp4 or .gif")
    model, info = load_checkpoint(args.checkpoint or SHIPPED_MODELS["crafter-scd"], device=args.device)
    window = _default_window(args.window, info)
    if window is not None and args.context > window:
        raise ValueError(f"--context {args.context} exceeds the history window of {window} frames (the next frame "
                         f"sees at most {window}; default: the training clip length - 1): lower --context or "
                         f"pass --window {args.context}")
    frames, recorded = _episode(args.data, info, args.episode, model.config.num_actions)
    total = args.context + args.frames
    if args.actions == "recorded":
        if args.start + total > len(frames):
            raise ValueError(f"episode {args.episode} has {len(frames)} frames; --start {args.start} + "
                             f"--context {args.context} + --frames {args.frames} do not fit")
        actions = np.asarray(recorded[args.start : args.start + total])
    else:
        if args.start + args.context > len(frames):
            raise ValueError(f"episode {args.episode} has {len(frames)} frames; --start {args.start} + "
                             f"--context {args.context} do not fit")
        given = parse_actions(args.actions, model.config.num_actions, info.get("data", {}).get("action_names"))
        given = (given * (args.frames // len(given) + 1))[: args.frames]  # repeat the pattern to fill the horizon
        actions = np.concatenate([recorded[args.start : args.start + args.context], given])
    context = frames_to_model(frames[args.start : args.start + args.context])[None]
    actions = torch.from_numpy(np.array(actions, dtype=np.int64))[None]
    guidance = None
    if args.cfg_scale != 1.0:
        guidance = Guidance(args.cfg_scale, null_action=args.cfg_null_action, context_noise=args.cfg_context_noise)

    generated, times = [], []
    stream = rollout(model, context, actions, steps=args.steps, shift=args.shift, guidance=guidance,
                     num_samples=args.samples, seed=args.seed, window=window)
    with operated(model, surgery_from_args(args, args.steps, args.shift)), \
            torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16), \
            tqdm(total=args.frames, desc=f"generate {model.config.arch}", unit="frame") as bar:
        start = time.perf_counter()
        for frame in stream:  # (1, samples, C, H, W)
            generated.append(frame[0])
            times.append(time.perf_counter() - start)
            bar.update(1)
            start = time.perf_counter()
    pred = torch.stack(generated, dim=1)  # (samples, H, C, H, W)
    steady = times[1:] or times
    print(f"{model.config.arch}: {len(times)} frames x {args.samples} samples, first frame {times[0]:.3f} s "
          f"(context prefill included), then {sum(steady) / len(steady):.3f} s per frame")

    ctx_u8 = frames_to_uint8(context[0])
    columns = {}
    if args.actions == "recorded":
        columns["ground truth"] = np.asarray(frames[args.start : args.start + total])
    for s in range(args.samples):
        columns[f"{model.config.arch} #{s}" if args.samples > 1 else model.config.arch] = np.concatenate(
            [ctx_u8, frames_to_uint8(pred[s])])
    names = info.get("data", {}).get("action_names") or []
    captions = [f"{'context' if i < args.context else 'generated'} {i + 1}/{total}  action: "
                f"{names[a] if a < len(names) else a}" for i, a in enumerate(actions[0].tolist())]
    colours = [CONTEXT_COLOUR if i < args.context else GENERATED_COLOUR for i in range(total)]
    video = with_captions(side_by_side(columns, scale=args.scale), captions, colours)
    path = write_video(args.out, video, fps=args.fps)
    print(f"wrote {path} (the first {args.context} frames, captioned in blue, are the given context; generated "
          f"frames are captioned in red, with the action that produced each frame)")
    return 0


def add_generate_parser(sub) -> None:
    from .sampling import Guidance, Streamer
    from .video import side_by_side, write_video

    p = sub.add_parser("generate", help=COMMANDS["generate"][0])
    p.add_argument("--checkpoint", help="checkpoint or run directory, or a shipped model name (crafter-scd, "
                                        "crafter-dit; default: crafter-scd)")
    p.add_argument("--data", help="data set directory or context .npz for the context frames (default: the data "
                                   "the model was trained on, else the shipped Crafter context file)")
    p.add_argument("--episode", type=at_least(0), default=0, help="episode of --data (default: 0)")
    p.add_argument("--start", type=at_least(0), default=0, help="first context frame in the episode (default: 0)")
    p.add_argument("--context", type=at_least(1), default=4, help="real frames given (default: 4)")
    p.add_argument("--frames", type=at_least(1), default=32, help="frames to generate (default: 32)")
    p.add_argument("--actions", default="recorded",
                   help="'recorded', or ids/names like '1,1,2' (repeated to fill --frames; default: recorded)")
    add_sampler_options(p)
    add_option(p, "--samples", Streamer, "num_samples", "trajectories", type=at_least(1))
    p.add_argument("--window", type=at_least(1), help="past frames the next frame sees (default: the checkpoint's "
                                                      "training clip length - 1, the most any training frame saw)")
    p.add_argument("--cfg-scale", type=finite, default=1.0, help="guidance scale (default: 1 = off)")
    add_option(p, "--cfg-context-noise", Guidance, "context_noise", "eta_cfg for context guidance (SCD)",
               type=at_least(0.0, float))
    p.add_argument("--cfg-null-action", action="store_true", help="negative branch uses the null action")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    add_device_option(p)
    p.add_argument("--out", default="out/generated.mp4", help=".mp4 or .gif (default: out/generated.mp4)")
    add_option(p, "--fps", write_video, "fps", "video frames per second", type=at_least(1))
    add_option(p, "--scale", side_by_side, "scale", "nearest-neighbour upscaling of the video", type=at_least(1))
    add_surgery_arguments(p, training=False)
    p.set_defaults(func=cmd_generate)


# -- scd export ----------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from .checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {path} ({size / 1e6:.1f} MB: EMA weights and config)")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help=COMMANDS["export"][0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--out", required=True, help="directory of the lean checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint at --out (never the source checkpoint)")
    p.set_defaults(func=cmd_export)


# -- parser and entry point ----------------------------------------------------------------------------------
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `scd` parser with the full options of `command` only (the others list their one-line help)."""
    parser = Parser(prog="scd", description="Separable Causal Diffusion world models")
    parser.add_argument("--version", action="version", version=f"scd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, builder) in COMMANDS.items():
        if name == command:
            module, function = builder.split(":")
            getattr(importlib.import_module(module), function)(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def _user_error(err: BaseException) -> bool:
    """Errors caused by what the user asked for (bad values, files, too little memory), not bugs."""
    return isinstance(err, (ValueError, OSError, FloatingPointError, MemoryError)) or _out_of_memory(err) or \
        type(err).__name__ == "MissingWeightsError"


def _out_of_memory(err: BaseException) -> bool:
    # torch raises OutOfMemoryError on a GPU but a plain RuntimeError from its CPU allocator
    return type(err).__name__ == "OutOfMemoryError" or isinstance(err, MemoryError) or \
        (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # user errors: one clear line, no traceback
        if not _user_error(err):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _out_of_memory(err) and not isinstance(err, MemoryError):  # ours name the size and the way out
            message = f"out of memory ({message}): ask for fewer frames, samples or a smaller --window/--context"
        if "tqdm" in sys.modules:  # end the progress bars the error interrupted, so it gets a line of its own
            for bar in list(sys.modules["tqdm"].tqdm._instances):
                bar.close()
        print(f"scd {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
