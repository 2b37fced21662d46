"""Build the assets that ship inside the package (scd/assets): lean SCD and Causal DiT checkpoints and a
context file of real Crafter frames from the held-out benchmark split.

    python scripts/make_assets.py --scd runs/crafter-scd-xs --dit runs/crafter-dit-xs --bench data/crafter-bench

Either model may be left out: the one not given keeps its shipped checkpoint.
"""

import argparse

import numpy as np

from scd.checkpoint import export_checkpoint
from scd.config import SHIPPED_CHECKPOINTS, SHIPPED_CONTEXT
from scd.data.context import ContextSet, save_context_npz
from scd.data.store import VideoStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scd", help="run or checkpoint of the Crafter SCD (default: keep the shipped one)")
    p.add_argument("--dit", help="run or checkpoint of the Crafter Causal DiT (default: keep the shipped one)")
    p.add_argument("--bench", required=True, help="the crafter-bench split (scd data record --benchmark crafter-bench)")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--frames", type=int, default=40, help="frames per episode: 4 of context + 36 of ground truth")
    p.add_argument("--start", type=int, default=20, help="first frame taken from each episode")
    p.add_argument("--sample-steps", type=int, help="the models' default denoising steps (default: their configs')")
    p.add_argument("--sample-temperature", type=float,
                   help="the models' default starting-noise std (default: their configs')")
    p.add_argument("--sample-shift", type=float, help="the models' default schedule shift (default: their configs')")
    p.add_argument("--sample-window", type=int, help="the models' default history window (default: their configs')")
    args = p.parse_args()
    if args.scd is None and args.dit is None:
        p.error("give --scd, --dit or both")

    for name, src in (("scd", args.scd), ("dit", args.dit)):
        if src is None:
            continue
        path = export_checkpoint(src, SHIPPED_CHECKPOINTS[name], overwrite=True, sample_steps=args.sample_steps,
                                  sample_temperature=args.sample_temperature, sample_shift=args.sample_shift,
                                  sample_window=args.sample_window)
        print(f"{name}: {path} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
    store = VideoStore(args.bench)
    span = slice(args.start, args.start + args.frames)
    episodes = [store.episode(e) for e in range(min(args.episodes, store.num_episodes))]
    context = ContextSet(np.stack([np.asarray(f[span]) for f, _ in episodes]),
                         np.stack([np.asarray(a[span]) for _, a in episodes]),
                         tuple(store.action_names), str(args.bench))
    path = save_context_npz(SHIPPED_CONTEXT, context)
    print(f"context: {path} {context.frames.shape} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
