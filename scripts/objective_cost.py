#!/usr/bin/env python
"""What rollout training costs: seconds per training step of teacher forcing (FlowMatching) and of rollout
training (RolloutTraining, S sampling steps) for an SCD and a Causal DiT of matched size, measured interleaved in
one run (the order alternates every repeat) with a fixed thread count, on random clips of the preset's shape.

    python scripts/objective_cost.py --scd scd-xs --dit dit-xs --batch 8 --clip-len 8 --rollout-steps 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from scd.config import get_preset
from scd.flow import FlowConfig
from scd.models import build_model
from scd.objectives import FlowMatching, RolloutTraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scd", default="scd-xs")
    parser.add_argument("--dit", default="dit-xs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--rollout-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = {}
    for preset in (args.scd, args.dit):
        model = build_model(get_preset(preset))
        flow = FlowConfig(context_noise=0.05 if model.config.arch == "scd" else 0.0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for name, objective in (("teacher forcing", FlowMatching(flow)),
                                (f"rollout S={args.rollout_steps}", RolloutTraining(flow, args.rollout_steps))):
            cases[f"{preset} {name}"] = (model, optimizer, objective)
    c, h, w = get_preset(args.scd).frame_shape
    frames = torch.rand(args.batch, args.clip_len, c, h, w) * 2 - 1
    actions = torch.randint(0, 17, (args.batch, args.clip_len))
    times = {name: [] for name in cases}
    order = list(cases)
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name in order if repeat % 2 else order[::-1]:
            model, optimizer, objective = cases[name]
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = objective(model, frames, actions)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if repeat:
                times[name].append(time.perf_counter() - start)
    print(f"{args.threads} thread(s), batch {args.batch} x {args.clip_len} frames, bf16 {args.bf16}, "
          f"load average {os.getloadavg()[0]:.2f}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        preset = name.split()[0]
        base = medians[f"{preset} teacher forcing"]
        print(f"{name:<28} {seconds:7.3f} s/step  ({seconds / base:.2f}x teacher forcing)")


if __name__ == "__main__":
    main()
