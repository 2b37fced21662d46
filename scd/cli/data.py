"""``scd data``: record, import and inspect scd-video-v1 datasets.

    scd data record --source crafter --out data/crafter --episodes 8 --steps 500 --seed 0 [--size 64]
    scd data record --benchmark crafter-bench --out data/crafter-bench
    scd data import-teco NPZ_DIR --out DIR [--num-actions N]
    scd data import-ucf101 PATH [PATH ...] --out DIR [--size 64] [--max-frames N]
    scd data info DIR
"""

from __future__ import annotations

import argparse

import numpy as np

from . import COMMANDS


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help=COMMANDS["data"][0])
    sub = parser.add_subparsers(dest="data_command", required=True)

    rec = sub.add_parser("record", help="record game video with a scripted/random policy")
    what = rec.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="'crafter' or 'atari:<Game>' (e.g. atari:Breakout, atari:Pong)")
    what.add_argument("--benchmark", help="regenerate a named benchmark split, e.g. crafter-bench")
    rec.add_argument("--out", required=True, help="output dataset directory (new or empty)")
    rec.add_argument("--episodes", type=int, default=8)
    rec.add_argument("--steps", type=int, default=500, help="frames per episode, reset frame included")
    rec.add_argument("--seed", type=int, default=0, help="base seed; episode i uses seed * 100000 + i")
    rec.add_argument("--size", type=int, default=64, help="frames are size x size RGB")
    rec.add_argument("--full-length", action="store_true", help="drop episodes that end early, try further seeds")
    rec.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.add_argument("--workers", type=int, default=1,
                     help="processes rolling episodes out (the dataset is the same for any number)")
    rec.set_defaults(func=_record)

    teco = sub.add_parser("import-teco", help="import TECO-style .npz episodes (video, actions)")
    teco.add_argument("npz_dir")
    teco.add_argument("--out", required=True)
    teco.add_argument("--num-actions", type=int, default=None, help="default: max action + 1")
    teco.add_argument("--fps", type=int, default=20)
    teco.add_argument("--overwrite", action="store_true")
    teco.set_defaults(func=_import_teco)

    ucf = sub.add_parser("import-ucf101", help="import UCF-101 .avi videos (no actions)")
    ucf.add_argument("paths", nargs="+", help="a directory searched for *.avi, or video files")
    ucf.add_argument("--out", required=True)
    ucf.add_argument("--size", type=int, default=64)
    ucf.add_argument("--max-frames", type=int, default=None, help="keep only the first frames of each video")
    ucf.add_argument("--overwrite", action="store_true")
    ucf.set_defaults(func=_import_ucf101)

    info = sub.add_parser("info", help="summarise a dataset")
    info.add_argument("dir")
    info.set_defaults(func=_info)


def _summary(meta, out: str) -> None:
    lengths = [ep.length for ep in meta.episodes]
    print(f"wrote {out}: {len(lengths)} episodes, {sum(lengths)} frames of {tuple(meta.frame_shape)}")


def _record(args: argparse.Namespace) -> int:
    from ..data.record import record, record_benchmark

    if args.benchmark:
        meta = record_benchmark(args.benchmark, args.out, progress=not args.quiet, overwrite=args.overwrite)
    else:
        meta = record(
            args.source,
            args.out,
            episodes=args.episodes,
            steps=args.steps,
            seed=args.seed,
            size=args.size,
            progress=not args.quiet,
            overwrite=args.overwrite,
            full_length=args.full_length,
            workers=args.workers,
        )
    _summary(meta, args.out)
    return 0


def _import_teco(args: argparse.Namespace) -> int:
    from ..data.formats import import_teco

    meta = import_teco(args.npz_dir, args.out, num_actions=args.num_actions, fps=args.fps, overwrite=args.overwrite)
    _summary(meta, args.out)
    return 0


def _import_ucf101(args: argparse.Namespace) -> int:
    from ..data.formats import import_ucf101

    source = args.paths[0] if len(args.paths) == 1 else args.paths
    meta = import_ucf101(source, args.out, size=args.size, max_frames=args.max_frames, overwrite=args.overwrite)
    _summary(meta, args.out)
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..data.store import VideoStore

    store = VideoStore(args.dir)
    meta = store.meta
    lengths = store.episode_lengths
    print(f"dataset     {store.path}")
    print(f"source      {meta.source}")
    print(f"frames      {store.num_frames} of {meta.frame_shape[0]}x{meta.frame_shape[1]} RGB at {meta.fps} fps")
    print(
        f"episodes    {store.num_episodes} (length min {lengths.min()}, "
        f"mean {lengths.mean():.1f}, max {lengths.max()})"
    )
    shards = sorted({ep.shard for ep in meta.episodes})
    print(f"shards      {len(shards)}")
    counts = store.action_counts()
    total = max(int(counts.sum()), 1)
    print(f"actions     {store.num_actions}")
    width = max(len(n) for n in meta.action_names)
    for k in np.argsort(-counts, kind="stable"):
        share = counts[k] / total
        bar = "#" * int(round(40 * share))
        print(f"  {k:3d} {meta.action_names[k]:<{width}} {counts[k]:8d} {100 * share:5.1f}% {bar}")
    if meta.recorder:
        keys = ", ".join(f"{k}={meta.recorder[k]}" for k in ("seed", "episodes", "steps", "benchmark") if k in meta.recorder)
        if keys:
            print(f"recorder    {keys}")
    return 0
