"""`scd info`: parameters and block passes per frame of presets and checkpoints, as each model describes itself."""

from __future__ import annotations

import json
from pathlib import Path

from . import COMMANDS
from .options import at_least


def cmd_info(args) -> int:
    import torch

    from ..checkpoint import load_model
    from ..config import PRESETS, SHIPPED_MODELS, get_preset
    from ..models import build_model

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
    print(f"{'model':<13} {'arch':<10} {'blocks':>6} {'hidden':>6} {'params':>9} {'tokens/F':>8} "
          f"{'BP/frame (S=' + str(args.steps) + ')':>18}")
    for r, model in zip(rows, models):
        print(f"{r['name']:<13} {r['arch']:<10} {r['blocks']:>6} {r['hidden']:>6} {r['params'] / 1e6:>8.1f}M "
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
