"""The `scd` command: every command lives in this package, which only parses arguments, builds objects and calls
the library; the library never imports it.

Each command module has an `add_<command>_parser(subparsers)` that sets `func` to its `cmd_<command>(args)`. Only
the command being run is built and imported, so `scd --help` and `scd --version` start without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .options import Parser

# command -> (one-line help for `scd --help`, "module:function" that adds its full parser), in `scd --help` order
COMMANDS = {
    "info": ("parameters and block passes per frame of a preset or checkpoint", "scd.cli.info:add_info_parser"),
    "train": ("train SCD or the Causal DiT on a recorded data set", "scd.cli.train:add_train_parser"),
    "demo": ("record fresh Crafter episodes, fine-tune the shipped SCD on them for a few minutes and compare "
             "on held-out ones", "scd.cli.train:add_demo_parser"),
    "generate": ("roll out a model from real context frames and write a video", "scd.cli.generate:add_generate_parser"),
    "export": ("a lean copy of a checkpoint for shipping: EMA weights + config", "scd.cli.checkpoints:add_export_parser"),
    "data": ("record, import and inspect video datasets", "scd.cli.data:add_data_parser"),
    "play": ("play a world model in the browser (or --benchmark its speed)", "scd.cli.play:add_play_parser"),
    "bench": ("streaming speed and memory: SCD vs a Causal DiT of matched size", "scd.cli.bench:add_bench_parser"),
    "eval": ("PSNR/SSIM/LPIPS (best of N) and FVD of rollouts on held-out videos", "scd.cli.evaluate:add_eval_parser"),
    "probe": ("step similarity, PCA, attention mass and leave-one-out of a model", "scd.cli.probe:add_probe_parser"),
    "quality": ("rollout PSNR/SSIM/LPIPS vs ground truth on a few held-out clips (optionally under a surgery) "
                "and s/frame", "scd.cli.probe:add_quality_parser"),
    "convert": ("build an SCD from a trained Causal DiT (encoder l, decoder a+b blocks)",
                "scd.cli.checkpoints:add_convert_parser"),
    "weights": ("check or install the LPIPS and I3D (FVD) weights that `scd eval` needs",
                "scd.cli.evaluate:add_weights_parser"),
    "codec": ("train a frame autoencoder for latent world models, or score a codec's reconstructions",
              "scd.cli.codec:add_codec_parser"),
}


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
