"""Building blocks of the `scd` command's options, shared by every command module.

Defaults come from where the library keeps them (a config dataclass field or a function's keyword default), so
the command line and the Python API cannot drift apart. Value checks are argparse types: a bad value stops the
command before anything slow runs, with one line that names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import typing
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `scd generate: error: argument --frames: ...`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def library_default(source, name: str):
    """The default of `name`: a field of the dataclass `source`, or a keyword argument of the callable `source`."""
    if dataclasses.is_dataclass(source):
        field = next(f for f in dataclasses.fields(source) if f.name == name)
        return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    default = inspect.signature(source).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{source.__qualname__}() has no default for {name!r}")
    return default


def add_option(parser, flag: str, source, name: str, help: str, **kwargs) -> None:
    """--flag with the library's default for `name` (see library_default), shown in the help text."""
    default = library_default(source, name)
    if isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=f"{help} (default: {'on' if default else 'off'})", **kwargs)
        return
    kwargs.setdefault("type", type(default))
    shown = "" if default is None else f" (default: {default})"
    parser.add_argument(flag, default=default, help=help + shown, **kwargs)


# -- value checks (argparse types) -----------------------------------------------------------------------------
def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    return _number(float, text)


def at_least(low, kind=int):
    """An argparse type: a number >= low."""
    def check(text: str):
        value = _number(kind, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    check.__name__ = f"{kind.__name__} >= {low}"
    return check


def positive(kind=float):
    """An argparse type: a number > 0."""
    def check(text: str):
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    check.__name__ = f"positive {kind.__name__}"
    return check


def device(text: str) -> str:
    """An argparse type: a torch device that exists on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}: use cpu, cuda, cuda:N or mps")
    return text


def add_sampler_options(parser) -> None:
    """--steps, --shift and --seed of a rollout, with the Streamer's defaults (generate, probe, quality)."""
    from ..sampling import Streamer

    add_option(parser, "--steps", Streamer, "steps", "denoising steps S (default: the model's config.sample_steps, "
               "20 unless its checkpoint says)", type=at_least(1))
    add_option(parser, "--shift", Streamer, "shift", "schedule shift k (default: the model's config.sample_shift, "
               "1 unless its checkpoint says)", type=positive())
    add_option(parser, "--seed", Streamer, "seed", "noise seed", type=at_least(0))


def resolve_sampler_options(args, model) -> None:
    """--steps and --shift left out: the model's own `sample_steps` and `sample_shift`, as a Streamer would take
    them (the commands also give them to the surgeries and the probes, which need values)."""
    args.steps = args.steps or model.config.sample_steps
    args.shift = args.shift or model.config.sample_shift


def add_compile_option(parser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="compile each frame's step with torch.compile (CUDA graphs on a GPU): the first frames "
                             "wait for the compiler, the later ones run faster")


def add_device_option(parser) -> None:
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


# -- surgeries (options of train, generate and the evaluation commands) ---------------------------------------
def add_surgery_arguments(p: argparse.ArgumentParser, training: bool) -> None:
    """The paper's surgeries on a Causal DiT (surgery.Surgery) as options."""
    g = p.add_argument_group("surgeries (Causal DiT)")
    g.add_argument("--skip-after-step", type=at_least(0), metavar="K",
                   help="skip-layer schedule: the first K denoising steps run every block, later steps only "
                        "--keep-prefix and --keep-suffix blocks (the paper: 5 of 50 steps, layers 8-22 of 30 skipped)")
    g.add_argument("--keep-prefix", type=at_least(0), default=0, metavar="P",
                   help="first blocks kept by skipped steps (default: 0)")
    g.add_argument("--keep-suffix", type=at_least(0), default=0, metavar="Q",
                   help="last blocks kept by skipped steps (default: 0)")
    g.add_argument("--diagonal-last", type=at_least(0), default=0, metavar="N",
                   help="frame-diagonal mask on the last N blocks: they attend only inside their own frame (default: 0)")
    if training:
        g.add_argument("--skip-steps", type=at_least(1), default=20, metavar="S",
                       help="the sampling schedule (S steps, --skip-shift) whose step K sets the skip time (default: 20)")
        g.add_argument("--skip-shift", type=positive(), default=1.0, help="(default: 1.0)")


def surgery_from_args(args, steps: int | None = None, shift: float | None = None):
    """surgery.Surgery from the options of `add_surgery_arguments`, or None when none is asked for."""
    from ..surgery import Surgery

    steps = args.skip_steps if steps is None else steps
    shift = args.skip_shift if shift is None else shift
    if args.skip_after_step is None:
        if args.keep_prefix or args.keep_suffix:
            raise ValueError("--keep-prefix/--keep-suffix need --skip-after-step")
        return Surgery(diagonal_last=args.diagonal_last) if args.diagonal_last else None
    return Surgery.skip_after(args.skip_after_step, steps, shift, keep_prefix=args.keep_prefix,
                              keep_suffix=args.keep_suffix, diagonal_last=args.diagonal_last)


def check_out_dir(path: str, option: str = "--out") -> None:
    """Refuse an output folder that is a file, before anything slow runs."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory")


def parse_episodes(text: str | None) -> list[int] | None:
    """--episodes '0-7' or '1,3,5' (or a mix, '0-3,9') -> indices; None stays None."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"--episodes: expected indices like 0-7 or 1,3,5, got {text!r}")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out
