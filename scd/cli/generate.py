"""`scd generate`: roll out a model from real context frames and write the video beside the ground truth."""

from __future__ import annotations

from pathlib import Path

from . import COMMANDS
from .options import (add_compile_option, add_device_option, add_option, add_sampler_options, add_surgery_arguments,
                      at_least, finite, resolve_sampler_options, surgery_from_args)


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


def cmd_generate(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..checkpoint import load_checkpoint, rollout_window
    from ..config import SHIPPED_CONTEXT, SHIPPED_MODELS
    from ..data.context import load_episode
    from ..sampling import Guidance, rollout
    from ..surgery import operated
    from ..timing import frame_seconds, timed, timed_frames
    from ..video import rollout_video, write_video

    if Path(args.out).suffix not in (".mp4", ".gif"):
        raise ValueError(f"unsupported video format {Path(args.out).suffix!r} of --out {args.out}: use .mp4 or .gif")
    model, info = load_checkpoint(args.checkpoint or SHIPPED_MODELS["crafter-scd"], device=args.device)
    window = args.window or rollout_window(model.config, info)
    if window is not None and args.context > window:
        raise ValueError(f"--context {args.context} exceeds the history window of {window} frames (the next frame "
                         f"sees at most {window}; default: the model's sample_window, else its training clip length "
                         f"- 1): lower --context or pass --window {args.context}")
    # the context: --data, else the data the model was trained on if it is on this machine, else the shipped file
    data = args.data or info.get("data", {}).get("path")
    if args.data is None and (data is None or not Path(data).exists()):
        data = str(SHIPPED_CONTEXT)
    frames, recorded = load_episode(data, args.episode, model.config.num_actions)
    codec = model.codec  # game frames <-> the model's frames (pixels, or a latent codec's)
    codec.check_pixel_shape(frames.shape[1:], f"--data {data}")
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
    context_u8 = np.asarray(frames[args.start : args.start + args.context])
    context = torch.from_numpy(context_u8.copy())[None]  # uint8: the rollout encodes it with the model's codec
    actions = torch.from_numpy(np.array(actions, dtype=np.int64))[None]
    guidance = None
    if args.cfg_scale != 1.0:
        guidance = Guidance(args.cfg_scale, null_action=args.cfg_null_action, context_noise=args.cfg_context_noise)

    generated, times = [], []
    resolve_sampler_options(args, model)
    stream = rollout(model, context, actions, steps=args.steps, shift=args.shift, guidance=guidance,
                     num_samples=args.samples, seed=args.seed, window=window, compile=args.compile,
                     temperature=args.temperature)
    with operated(model, surgery_from_args(args, args.steps, args.shift)), \
            torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16), \
            tqdm(total=args.frames, desc=f"generate {model.config.arch}", unit="frame") as bar:
        for frame, seconds in timed_frames(stream, model.device):  # frame: (1, samples, C, H, W)
            generated.append(frame[0])
            times.append(seconds)
            bar.update(1)
    pred = torch.stack(generated, dim=1)  # (samples, H, C, h, w) in the model's space
    pixels, decode_seconds = timed(lambda: codec.decode(pred).cpu().numpy(), codec.device)  # (samples, H, h, w, 3)
    speed = frame_seconds(times)
    decoding = "" if codec.kind == "pixel" else \
        f"; the {codec.kind} codec decodes a frame in {1000 * decode_seconds / len(times):.1f} ms (not included)"
    print(f"{model.config.arch}: {len(times)} frames x {args.samples} samples, first frame "
          f"{speed['first_frame_s']:.3f} s (context prefill included), then {speed['seconds_per_frame']:.3f} s per "
          f"frame{decoding}")

    columns = {}
    if args.actions == "recorded":
        columns["ground truth"] = np.asarray(frames[args.start : args.start + total])
    for s in range(args.samples):
        columns[f"{model.config.arch} #{s}" if args.samples > 1 else model.config.arch] = np.concatenate(
            [context_u8, pixels[s]])
    names = info.get("data", {}).get("action_names") or []
    captions = [f"{'context' if i < args.context else 'generated'} {i + 1}/{total}  action: "
                f"{names[a] if a < len(names) else a}" for i, a in enumerate(actions[0].tolist())]
    video = rollout_video(columns, captions, [i < args.context for i in range(total)], scale=args.scale)
    path = write_video(args.out, video, fps=args.fps)
    print(f"wrote {path} (the first {args.context} frames, captioned in blue, are the given context; generated "
          f"frames are captioned in red, with the action that produced each frame)")
    return 0


def add_generate_parser(sub) -> None:
    from ..sampling import Guidance, Streamer
    from ..video import side_by_side, write_video

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
    add_option(p, "--temperature", Streamer, "temperature", "std of each frame's starting noise (default: the "
               "model's config.sample_temperature)", type=at_least(0.0, float))
    p.add_argument("--window", type=at_least(1), help="past frames the next frame sees (default: the checkpoint's "
                                                      "training clip length - 1, the most any training frame saw)")
    p.add_argument("--cfg-scale", type=finite, default=1.0, help="guidance scale (default: 1 = off)")
    add_option(p, "--cfg-context-noise", Guidance, "context_noise", "eta_cfg for context guidance (SCD)",
               type=at_least(0.0, float))
    p.add_argument("--cfg-null-action", action="store_true", help="negative branch uses the null action")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    add_compile_option(p)
    add_device_option(p)
    p.add_argument("--out", default="out/generated.mp4", help=".mp4 or .gif (default: out/generated.mp4)")
    add_option(p, "--fps", write_video, "fps", "video frames per second", type=at_least(1))
    add_option(p, "--scale", side_by_side, "scale", "nearest-neighbour upscaling of the video", type=at_least(1))
    add_surgery_arguments(p, training=False)
    p.set_defaults(func=cmd_generate)
