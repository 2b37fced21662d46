"""`scd train` and `scd demo` (fine-tuning the shipped model on fresh recordings)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import COMMANDS
from .options import (add_device_option, add_option, add_surgery_arguments, at_least, check_out_dir, positive,
                      surgery_from_args)

DEFAULT_PRESET = "scd-s"


def latent_patch_size(preset, frame_shape) -> int:
    """The patch size that gives a model of `preset` on frames of `frame_shape` (a codec's latents) the preset's
    token grid: 64 tokens per frame for the small presets (an 8x8 latent: patch 1)."""
    (gh, gw), (_, h, w) = preset.grid, frame_shape
    if h % gh or w % gw or h // gh != w // gw:
        raise ValueError(f"the codec's {h}x{w} latents do not split into the preset's {gh}x{gw} token grid: give "
                         "--patch-size")
    return h // gh


# CLI option (argparse dest) -> TrainConfig.to_dict key ("flow.x": a FlowConfig field). Their argparse default is
# None (not given): a resumed run keeps its own value, a new run takes the library's.
TRAINING_OPTIONS = {
    "steps": "steps", "batch": "batch", "clip_len": "clip_len", "lr": "lr", "warmup": "warmup", "lr_min": "lr_min",
    "weight_decay": "weight_decay", "grad_clip": "grad_clip", "ema": "ema_decay", "bf16": "bf16",
    "ckpt_every": "ckpt_every", "log_every": "log_every", "seed": "seed", "rollout_steps": "rollout_steps",
    "rollout_context": "rollout_context", "rollout_one_step": "rollout_one_step", "micro_batch": "micro_batch",
    "adversarial_weight": "adversarial_weight", "critic_lr": "critic_lr",
    "K": "flow.K", "eta": "flow.context_noise",
    "timesteps": "flow.timesteps", "shift": "flow.shift", "action_dropout": "flow.action_dropout",
    "encoder_t_min": "flow.encoder_t_min", "history_noise": "flow.history_noise",
}


def training_config(args, saved: dict | None):
    """TrainConfig from `saved` (a resumed run's config.json "train"; None: the library's defaults) with the options
    given on the command line in place of its values."""
    from ..train import TrainConfig

    options = (TrainConfig.from_dict(saved) if saved is not None else TrainConfig()).to_dict()
    for dest, key in TRAINING_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            *section, name = key.split(".")
            (options[section[0]] if section else options)[name] = value
    surgery = surgery_from_args(args)
    if surgery is not None:
        options["surgery"] = surgery
    return TrainConfig.from_dict(options)


def changed_options(saved: dict, given: dict, prefix: str = "") -> list[str]:
    """'name old -> new' for each training option (TrainConfig.to_dict as JSON, nested) that differs between a
    run's checkpoint and this command."""
    changed = []
    for name in sorted(set(saved) | set(given)):
        old, new = saved.get(name), given.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_options(old, new, f"{prefix}{name}.")
        elif old != new:
            changed.append(f"{prefix}{name} {old} -> {new}")
    return changed


def cmd_train(args) -> int:
    from ..checkpoint import check_resumable, load_model_codec, read_config
    from ..codec import load_codec
    from ..config import SAMPLER_DEFAULTS, ModelConfig, get_preset
    from ..data.store import ClipDataset, VideoStore
    from ..train import train

    check_out_dir(args.out)
    previous = None if args.no_resume or not Path(args.out).is_dir() else check_resumable(args.out)
    saved_train = read_config(previous)["train"] if previous is not None else None
    cfg = training_config(args, saved_train)
    # the network comes from a preset, or from a checkpoint: the run's own when it resumes (unless --preset is
    # given: then the two must agree), else --init-from's
    source = None if previous is not None and args.preset else previous or args.init_from
    source_config = read_config(source) if source else None
    store = VideoStore(args.data)
    codec = None  # pixels, or the source checkpoint's codec
    if args.codec:
        codec = load_codec(args.codec, pixel_shape=store.frame_shape)  # a codec for other frames fails here
    elif source:
        codec = load_model_codec(source_config)
    # a latent codec encodes the data once (cached), on the training device
    data = ClipDataset(store, cfg.clip_len, codec=codec, encode_device=args.device)
    inference_noise = cfg.flow.history_noise / 2 if args.history_noise_inference is None else \
        args.history_noise_inference
    if source:  # the checkpoint's network and settings, but those given here
        model_config = ModelConfig.from_dict(source_config["model"])
        if args.history_noise_inference is not None:
            model_config = model_config.replace(history_noise=inference_noise)
    else:
        preset = get_preset(args.preset or DEFAULT_PRESET)
        model_config = preset.replace(num_actions=data.num_actions, frame_shape=data.frame_shape,
                                      history_noise=inference_noise)
        if codec is not None and codec.kind != "pixel":  # latents: the preset's token grid, unbounded values
            model_config = model_config.replace(
                patch_size=args.patch_size or latent_patch_size(preset, codec.frame_shape), frame_range=None)
        elif args.patch_size:
            model_config = model_config.replace(patch_size=args.patch_size)
        if args.fusion and model_config.arch == "scd":
            model_config = model_config.replace(fusion=args.fusion)
    given = {"prediction": args.prediction, **{k: getattr(args, k) for k in SAMPLER_DEFAULTS}}
    model_config = model_config.replace(**{k: v for k, v in given.items() if v is not None})
    main_process = int(os.environ.get("RANK", 0)) == 0  # under torchrun only rank 0 speaks
    world = int(os.environ.get("WORLD_SIZE", 1))
    if main_process and previous is not None:
        # compared as config.json holds them (tuples are lists there)
        changed = changed_options(saved_train, json.loads(json.dumps(cfg.to_dict())))
        if changed:
            print(f"resuming {previous} with other training options than its run's: {', '.join(changed)}")
    if main_process:
        space = "" if codec is None or codec.kind == "pixel" else \
            f" in the latent space of the {codec.describe()}, patch {model_config.patch_size}"
        print(f"training {model_config.arch} ({source or args.preset or DEFAULT_PRESET}) on {len(data)} clips of "
              f"{cfg.clip_len} frames from {args.data}{space} -> {args.out} on {args.device}"
              + (f" x {world} processes ({args.parallel})" if world > 1 else ""))
    start = time.perf_counter()
    trainer = train(model_config, data, args.out, cfg, resume=not args.no_resume, init_from=args.init_from,
                    data_info=data.description(), time_limit=args.time_limit, device=args.device, workers=args.workers,
                    parallel=args.parallel)
    if main_process:
        took = f"{time.perf_counter() - start:.0f} s; checkpoints and log.csv in {args.out}"
        if trainer.step < cfg.steps:  # the time limit, SIGTERM or Ctrl-C: a checkpoint was written at this step
            print(f"stopped at step {trainer.step} of {cfg.steps}, {took}; run the same command again to resume")
        else:
            print(f"done: step {trainer.step}, {took}")
    return 0


def add_train_parser(sub) -> None:
    from ..config import PREDICTIONS, SAMPLER_DEFAULTS, ModelConfig
    from ..flow import FlowConfig
    from ..train import TrainConfig

    p = sub.add_parser("train", help=COMMANDS["train"][0])
    p.add_argument("--preset", help=f"model preset, any case (see `scd info all`; default: {DEFAULT_PRESET}, or "
                   "the run's own model when --out holds a checkpoint to resume)")
    p.add_argument("--data", required=True, help="data set directory (from `scd data record`)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.csv, loss.png; one that holds "
                   "checkpoints is resumed with its own network and training options, except those given here")
    p.add_argument("--codec", metavar="DIR",
                   help="train a latent world model in this codec's space: a codec or `scd codec train` run "
                        "directory, a diffusers autoencoder folder, or 'crafter' (the shipped Crafter autoencoder); "
                        "stored with every checkpoint (default: pixels; "
                        "with --init-from, the checkpoint's codec). The data is encoded once, cached in DATA/latents")
    p.add_argument("--patch-size", type=at_least(1), metavar="P",
                   help="patch size (default: the preset's; with --codec, the one that keeps the preset's token "
                        "grid, e.g. 1 on an 8x8 latent)")
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
               "from the last history frame before or after history noise (starts as copy-last-frame); with "
               "--init-from, the checkpoint's unless given", choices=list(PREDICTIONS))
    add_option(p, "--sample-steps", ModelConfig, "sample_steps", "denoising steps S the model samples with unless "
               "told (recorded in its config; with --init-from, the checkpoint's unless given)", type=at_least(1))
    add_option(p, "--sample-temperature", ModelConfig, "sample_temperature", "std of the starting noise the model "
               "samples with unless told (recorded in its config; with --init-from, the checkpoint's unless given)",
               type=at_least(0.0, float))
    add_option(p, "--sample-shift", ModelConfig, "sample_shift", "schedule shift k the model samples with unless "
               "told (recorded in its config; with --init-from, the checkpoint's unless given)", type=positive())
    p.add_argument("--sample-window", type=at_least(1), metavar="W", help="history window (past frames) the model "
                   "streams with in scd generate / play unless told (recorded in its config; default: the training "
                   "clip length - 1; with --init-from, the checkpoint's unless given)")
    # None: the preset's, or the --init-from checkpoint's
    p.set_defaults(prediction=None, **dict.fromkeys(SAMPLER_DEFAULTS))
    add_option(p, "--history-noise", FlowConfig, "history_noise", "noise augmentation of history frames: each at "
               "a flow time ~ U(0, MAX), given to the network (0 = clean history)", metavar="MAX")
    p.add_argument("--history-noise-inference", type=at_least(0.0, float), metavar="T",
                   help="fixed flow time of history frames at inference (default: MAX / 2; with --init-from, the "
                        "checkpoint's unless given)")
    add_option(p, "--rollout-steps", TrainConfig, "rollout_steps",
               "rollout training: history = the model's own S-step samples (0 = teacher forcing)", metavar="S",
               type=at_least(0))
    add_option(p, "--rollout-context", TrainConfig, "rollout_context", "recorded frames before the rollout history",
               type=at_least(1))
    add_option(p, "--rollout-one-step", TrainConfig, "rollout_one_step", "with --rollout-steps: each history frame "
               "is the model's prediction from the recorded frames before it (one step's error), not a rollout")
    add_option(p, "--adversarial-weight", TrainConfig, "adversarial_weight", "with --rollout-steps: add this "
               "weight times a critic's verdict on frames rendered from the model's own rollout (0 = off)",
               metavar="W", type=at_least(0.0, float))
    add_option(p, "--critic-lr", TrainConfig, "critic_lr", "learning rate of the adversarial critic",
               type=positive())
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--no-resume", action="store_true", help="do not continue from checkpoints in --out")
    p.add_argument("--time-limit", type=positive(), help="stop (with a checkpoint) after this many seconds; "
                   "SIGTERM or Ctrl-C also stop with a checkpoint after the step under way (twice Ctrl-C: at once)")
    add_surgery_arguments(p, training=True)
    p.set_defaults(func=cmd_train, **dict.fromkeys(TRAINING_OPTIONS))  # None: not given (see training_config)


# -- scd demo ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from ..demo import demo

    check_out_dir(args.out)
    result = demo(args.out, args.minutes, args.episodes, args.held_out, args.length, args.seed, args.lr, args.context,
                  args.frames, args.steps, args.fps)
    psnr = result["psnr"]
    print(f"held-out PSNR over {len(result['episodes'])} episodes x {args.frames} generated frames: shipped "
          f"{psnr['shipped']:.2f} dB, fine-tuned for {result['steps']} steps {psnr['fine-tuned']:.2f} dB")
    print(f"wrote {result['video']}: ground truth | shipped SCD | fine-tuned SCD, {args.context} real context frames "
          f"then {args.frames} generated, per held-out episode")
    return 0


def add_demo_parser(sub) -> None:
    from ..train import TrainConfig

    p = sub.add_parser("demo", help=COMMANDS["demo"][0])
    p.add_argument("--out", default="out/demo", help="folder for the data, the run and the video (default: out/demo)")
    p.add_argument("--minutes", type=positive(), default=5.0, help="fine-tuning time budget (default: 5)")
    p.add_argument("--episodes", type=at_least(2), default=10, help="episodes to record (default: 10)")
    p.add_argument("--held-out", type=at_least(1), default=2, help="last episodes kept for the video (default: 2)")
    p.add_argument("--length", type=at_least(16), default=150,
                   help="frames per recorded episode, at least the shipped SCD's 16-frame training clip (default: 150)")
    p.add_argument("--seed", type=at_least(0), default=7, help="recording seed (default: 7)")
    add_option(p, "--lr", TrainConfig, "lr", "fine-tuning learning rate", type=positive())
    p.add_argument("--context", type=at_least(1), default=4, help="real frames each rollout starts from (default: 4)")
    p.add_argument("--frames", type=at_least(1), default=20, help="frames generated per episode (default: 20)")
    p.add_argument("--steps", type=at_least(1), default=10, help="denoising steps S (default: 10)")
    p.add_argument("--fps", type=at_least(1), default=8, help="video frames per second (default: 8)")
    p.set_defaults(func=cmd_demo)
