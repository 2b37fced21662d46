#!/usr/bin/env python
"""Mutation check: apply bugs that would matter to a copy of the package, one at a time, and report which ones
the test suite does not catch ("survivors"). Run it before you stop and record the survivors.

    python scripts/mutate.py              # every mutation, each against the test files it names
    python scripts/mutate.py --list       # the mutations, without running anything
    python scripts/mutate.py mask ema     # only mutations whose name contains one of these words

Each mutation replaces one exact snippet (it must occur exactly once, so a refactor that moves the code makes
the script fail loudly rather than test nothing) in a fresh copy of scd/ and runs pytest on that copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # test files (or node ids) that should catch it


MUTATIONS = [
    Mutation("teacher-forcing mask sees its own clean target", "scd/nn.py",
             "frame_pos[None, :] < frame_pos[:, None]", "frame_pos[None, :] <= frame_pos[:, None]",
             ("tests/test_models.py",)),
    Mutation("seq_offset RoPE offset equals seq_same", "scd/separable.py",
             '{"seq_offset": 0.0, "seq_same": 1.0}', '{"seq_offset": 1.0, "seq_same": 1.0}',
             ("tests/test_models.py",)),
    Mutation("EMA update replaced by a copy", "scd/train.py",
             "e.lerp_(p, 1 - decay)", "e.copy_(p)", ("tests/test_train.py",)),
    Mutation("ring KV cache keeps one frame past the window", "scd/nn.py",
             "kept = (self._slot < self.slots) & (age < held)", "kept = (self._slot < self.slots) & (age <= held)",
             ("tests/test_streaming.py", "tests/test_models.py")),
    Mutation("KV cache rows that joined later see the slots before their first frame", "scd/nn.py",
             "torch.clamp(self.pos - self.start, max=", "torch.clamp(self.pos + 0 * self.start, max=",
             ("tests/test_streaming.py",)),
    Mutation("leaving videos: rows picked as if one sample per video", "scd/sampling.py",
             "torch.tensor(kept)[:, None] * self.num_samples + torch.arange",
             "torch.tensor(kept)[:, None] + torch.arange", ("tests/test_streaming.py",)),
    Mutation("play server sends every session's frames to every page", "scd/play/server.py",
             "            if page.session == session:\n", "            if True:\n", ("tests/test_play.py",)),
    Mutation("ring KV cache writes one slot late", "scd/nn.py",
             "new = torch.cat([frame_pos[:n] % self.slots,", "new = torch.cat([(frame_pos[:n] + 1) % self.slots,",
             ("tests/test_streaming.py", "tests/test_models.py")),
    Mutation("ring KV cache: guidance branches share one slot", "scd/nn.py",
             "self._slot[self.slots : self.slots + branches - 1]])",
             "frame_pos[:1].expand(branches - 1) % self.slots])", ("tests/test_streaming.py",)),
    Mutation("x-prediction velocity sign", "scd/flow.py",
             "return (x_t - out.to(x_t.dtype)) / t", "return (out.to(x_t.dtype) - x_t) / t",
             ("tests/test_models.py",)),
    Mutation("history flow times shifted by one frame in training", "scd/separable.py",
             "t = torch.cat([torch.zeros(b, 1, device=history.device), history_t[:, :-1]], dim=1)",
             "t = torch.cat([torch.zeros(b, 1, device=history.device), history_t[:, 1:]], dim=1)",
             ("tests/test_models.py",)),
    Mutation("teacher forcing ignores the history flow times", "scd/nn.py",
             "t_all = torch.cat([history_t[:, :-1], t], dim=1)",
             "t_all = torch.cat([torch.zeros_like(t[:, :-1]), t], dim=1)", ("tests/test_models.py",)),
    Mutation("start slot read at the history flow time", "scd/separable.py",
             "t[:, :start] = 0.0  # the start token slot is clean", "pass", ("tests/test_models.py",)),
    Mutation("SCD commits finished frames without history noise", "scd/models.py",
             "history = stream.receive(frame[:, None])", "stream.receive(frame[:, None]); history = frame[:, None]",
             ("tests/test_models.py",)),
    Mutation("change prediction trains frame 0 (no x_{i-1})", "scd/flow.py",
             "        error = error[:, 1:]", "        error = error", ("tests/test_train.py",)),
    Mutation("change prediction anchored on x_i instead of x_{i-1}", "scd/flow.py",
             "past[:, :1]), past[:, :-1]], dim=1)", "past[:, :1]), past[:, 1:]], dim=1)",
             ("tests/test_train.py",)),
    Mutation("change prediction's sample not added to x_{i-1}", "scd/flow.py",
             "return _required(anchor).to(sample.dtype) + sample", "return sample", ("tests/test_models.py",)),
    Mutation("finished frames not clamped to the frame range", "scd/sampling.py",
             "        frame = frame.clamp(*model.config.frame_range)", "        pass", ("tests/test_models.py",)),
    Mutation("change prediction anchored on the corrupted frame", "scd/models.py",
             "self.anchor = (history if self.anchor_is_read else frames)[:, -1]", "self.anchor = history[:, -1]",
             ("tests/test_models.py",)),
    Mutation("guidance noise drawn from the frame-noise stream", "scd/sampling.py",
             "cfg.hidden), generator=self.guidance_generator)", "cfg.hidden), generator=self.generator)",
             ("tests/test_models.py",)),
    Mutation("rollout training reads the recorded frames", "scd/objectives.py",
             "own[:, 0].to(frames.dtype)", "frames[:, self.context :]", ("tests/test_train.py",)),
    Mutation("cosine decay stops half way", "scd/train.py",
             "math.cos(math.pi * progress)", "math.cos(math.pi * progress / 2)", ("tests/test_train.py",)),
    Mutation("copy-last baseline copies the first context frame", "scd/baselines.py",
             "context[-1:].expand", "context[:1].expand", ("tests/test_eval.py",)),
    Mutation("noisy change prediction trains from the clean anchor", "scd/flow.py",
             "past = read if prediction.anchor_is_read else history", "past = history",
             ("tests/test_train.py",)),
    Mutation("noisy change prediction streams from the clean anchor", "scd/models.py",
             "self.anchor = (history if self.anchor_is_read else frames)[:, -1]", "self.anchor = frames[:, -1]",
             ("tests/test_models.py",)),
    Mutation("colour-histogram distance without the one-half", "scd/metrics/image.py",
             "return 0.5 * (histogram(pred) - histogram(target)).abs().sum(dim=2)",
             "return (histogram(pred) - histogram(target)).abs().sum(dim=2)", ("tests/test_metrics.py",
                                                                                 "tests/test_eval.py")),
    Mutation("parallel recording keeps episodes in completion order", "scd/data/record.py",
             "ep_seed, future = pending.popleft()", "ep_seed, future = pending.pop()", ("tests/test_data.py",)),
    Mutation("guided Causal DiT FLOPs: the clean pass sees one version", "scd/models.py",
             "return _frame_cost(trunk(batch, (history + g) * p), step, steps)",
             "return _frame_cost(trunk(batch, (history + 1) * p), step, steps)", ("tests/test_bench.py",)),
    Mutation("a resumed run forgets the checkpoint it started from", "scd/train.py",
             'self.init_from = config.get("init_from")', "pass", ("tests/test_cli.py",)),
    Mutation("a resumed run builds the default preset instead of its own network", "scd/cli/train.py",
             "source = None if previous is not None and args.preset else previous or args.init_from",
             "source = args.init_from", ("tests/test_cli.py",)),
    Mutation("a resumed run takes the library's training options instead of its own", "scd/cli/train.py",
             "options = (TrainConfig.from_dict(saved) if saved is not None else TrainConfig()).to_dict()",
             "options = TrainConfig().to_dict()", ("tests/test_cli.py",)),
    Mutation("generate and play ignore the model's own history window", "scd/checkpoint.py",
             "return config.sample_window or trained_window(info)", "return trained_window(info)",
             ("tests/test_cli.py", "tests/test_play.py")),
    Mutation("cuda device without an index", "scd/train.py",
             'device = torch.device("cuda", torch.cuda.current_device())', "pass", ("tests/test_train.py",)),
    Mutation("the shipped codec name is not resolved", "scd/codec/base.py",
             "codec = _from_folder(SHIPPED_CODECS[str(spec)], pixel_shape)",
             "codec = _from_folder(Path(spec), pixel_shape)", ("tests/test_codec.py",)),
    Mutation("a codec run started from a trained codec keeps its fresh weights", "scd/codec/train.py",
             "trainer.codec.load_state_dict(source.state_dict())", "pass", ("tests/test_codec.py",)),
    Mutation("sampling temperature ignores the model's own default", "scd/sampling.py",
             "self.temperature = model.config.sample_temperature if temperature is None else temperature",
             "self.temperature = 1.0 if temperature is None else temperature", ("tests/test_models.py",)),
    Mutation("sampling temperature does not scale the noise", "scd/sampling.py",
             "noise = self.temperature * torch.randn(", "noise = torch.randn(", ("tests/test_models.py",)),
    Mutation("schedule shift ignores the model's own default", "scd/sampling.py",
             "shift = model.config.sample_shift if shift is None else shift",
             "shift = 1.0 if shift is None else shift", ("tests/test_models.py",)),
    Mutation("motion measured from the frame itself instead of the one before", "scd/metrics/image.py",
             "return (x[:, 1:] - x[:, :-1]).abs()", "return (x[:, 1:] - x[:, 1:]).abs()",
             ("tests/test_metrics.py", "tests/test_eval.py")),
    Mutation("window FVD scores the generated frames one frame late", "scd/evaluate.py",
             "clip_features(frames[:, a - 1 : b])", "clip_features(frames[:, a : b + 1])", ("tests/test_eval.py",)),
    Mutation("a SIGTERM during training is not a stop request", "scd/train.py",
             "stop.requested)", "False)", ("tests/test_train.py",)),
    Mutation("data loader workers die of the stop signals", "scd/train.py",
             "worker_init_fn=leave_stop_signals_to_the_main_process", "worker_init_fn=None", ("tests/test_train.py",)),
    Mutation("one-step history samples a rollout instead", "scd/objectives.py",
             "        return frames[:, self.context :]\n", "        return None\n", ("tests/test_train.py",)),
    Mutation("results saved before a setting existed are refused", "scd/evaluate.py",
             "record[\"settings\"] = {**EvalSettings().to_dict(), **record[\"settings\"]}",
             "record[\"settings\"] = record[\"settings\"]", ("tests/test_eval.py",)),
    Mutation("PSNR of identical frames stays inf in the scores", "scd/metrics/scores.py",
             "psnr(pred, target).clamp(max=PSNR_CAP)", "psnr(pred, target)", ("tests/test_eval.py",)),
    Mutation("teacher forcing commits the rendered frame, not the observed one", "scd/sampling.py",
             "frame if observed is None else observed, a)", "frame, a)", ("tests/test_streaming.py",)),
    Mutation("teacher-forced baselines read the frame to predict", "scd/evaluate.py",
             "baseline(clip[i : i + c], 1)", "baseline(clip[i + 1 : i + c + 1], 1)", ("tests/test_eval.py",)),
    Mutation("teacher-forced motion measured from the generated frame before", "scd/metrics/scores.py",
             "pred_before = real_before if recorded_history else", "pred_before = real_before if False else",
             ("tests/test_eval.py",)),
    Mutation("adversarial frames carry gradient into the history", "scd/objectives.py",
             "        history = history.detach()\n", "", ("tests/test_adversarial.py",)),
    Mutation("adversarial frames rendered without the anchor's previous frame", "scd/objectives.py",
             "to_frame(sample, anchors(net.prediction, history, read))", "to_frame(sample, history)",
             ("tests/test_adversarial.py",)),
    Mutation("critic hinge rewards rendered frames", "scd/objectives.py",
             "torch.relu(1 + self.critic(fake.detach(), context))",
             "torch.relu(1 - self.critic(fake.detach(), context))", ("tests/test_adversarial.py",)),
    Mutation("generator term pushes away from what the critic calls recorded", "scd/objectives.py",
             "generator = -self.critic(", "generator = self.critic(", ("tests/test_adversarial.py",)),
    Mutation("critic ignores the context frame", "scd/critic.py",
             "torch.cat([frames, context], dim=-3)", "torch.cat([frames, 0 * context], dim=-3)",
             ("tests/test_adversarial.py",)),
    Mutation("a resumed run starts a fresh critic", "scd/train.py",
             "            self.objective.load_state_dict(state[\"objective\"])\n", "", ("tests/test_adversarial.py",)),
]


def run(mutation: Mutation, python: str) -> tuple[bool, float]:
    """Apply `mutation` to a fresh copy and run its tests; True if the tests fail (the mutation is caught)."""
    with tempfile.TemporaryDirectory(prefix="scd-mutant-") as tmp:
        copy = Path(tmp)
        for part in ("scd", "tests", "pyproject.toml"):
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / part)
        target = copy / mutation.file
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise SystemExit(f"mutation {mutation.name!r}: the snippet occurs {text.count(mutation.old)} times in "
                             f"{mutation.file} (expected once); update scripts/mutate.py")
        target.write_text(text.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": str(copy)}
        start = time.perf_counter()
        result = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
                                cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return result.returncode != 0, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="run only mutations whose name contains one of these words")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.file}; tests: {', '.join(m.tests)})")
        return 0
    stale = [m for m in chosen if (ROOT / m.file).read_text().count(m.old) != 1]
    if stale:  # check every snippet before spending minutes on the others
        raise SystemExit("snippets not found exactly once (update scripts/mutate.py): "
                         + "; ".join(f"{m.name!r} in {m.file}" for m in stale))
    survivors = []
    for m in chosen:
        caught, seconds = run(m, sys.executable)
        print(f"{'caught  ' if caught else 'SURVIVED'} {seconds:6.1f} s  {m.name}", flush=True)
        if not caught:
            survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutations caught; survivors: {survivors or 'none'}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
