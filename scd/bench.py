"""`scd bench`: streaming speed and memory of SCD against a Causal DiT of matched size, in one run.

    scd bench                                  # scd-s vs dit-s, S=20, batch 1, context 16
    scd bench --context 16 128 --json          # several context lengths; JSON instead of the table
    scd bench --checkpoint runs/scd-xs         # a trained model replaces the preset of its architecture

What is measured, per context length C (both models use the real streaming path, `scd.sampling.Streamer`):

- first-frame latency: building the Streamer (prefill of C random context frames) + rendering the first frame;
- seconds per frame: the median time of `Streamer.step` over the `frames` frames after the first one
  (history C+1 .. C+frames frames; no KV-cache eviction happens), over `repeats` repeats; frames per second
  = batch / (seconds per frame);
- the two models are interleaved frame by frame (A B A B ..., the order flips every repeat) so that both see
  the same machine load; `warmup` whole repeats run first and are not recorded. On CUDA every timing is
  bracketed by torch.cuda.synchronize();
- KV cache: `KVCache.nbytes()` of the stream (preallocated for the window of C + frames + 2 frames): SCD caches
  its l encoder blocks, the Causal DiT all L blocks;
- peak memory: on CUDA, torch.cuda.max_memory_allocated() growth over one streaming run (prefill + frames);
  on CPU, the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over the resident
  set after building the model and its inputs, for one streaming run in a fresh subprocess per model
  (weights excluded; activations, KV cache, allocator and library workspaces included).

Expected cost per frame, as each model answers it: block passes per frame (`block_passes`) and the FLOPs of
every matmul (QKV, projection, MLP, adaLN, embedding, head, time MLP) plus attention over the keys each query
sees (`frame_flops`): the Causal DiT's noisy frame attends its history and itself at each of the S steps and
once more in the pass that caches the finished frame; SCD's encoder slot attends the history once, and its
decoder attends the 2P tokens [c_i ; x_i] at each step. Preset models have their initial (random) weights: fine
for speed.

The report records the machine's load average: on a shared CPU, more torch threads than idle cores make every
parallel op wait for descheduled threads, which slows both models and pulls the measured ratio towards the
block-pass ratio (the cost then follows the number of ops, not their FLOPs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PRESETS, ModelConfig
from .models import WorldModel, build_model
from .sampling import Streamer
from .timing import sync, timed

FORMAT = "scd-bench-v1"


# -- models --------------------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """A model to bench: `source` is a preset name (random weights from `seed`) or a checkpoint path."""

    label: str
    source: str
    model: WorldModel


def load_bench_model(source: str, device: str = "cpu", seed: int = 0) -> BenchModel:
    """A preset name or a checkpoint (directory or run directory) -> BenchModel in eval mode on `device`."""
    if source in PRESETS:
        torch.manual_seed(seed)
        return BenchModel(source, source, build_model(PRESETS[source]).to(device).eval())
    if not Path(source).exists():
        raise ValueError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint")
    from .checkpoint import load_model

    return BenchModel(Path(source).name, source, load_model(source, device=device))


def _inputs(config: ModelConfig, context: int, frames: int, batch: int, seed: int, device):
    """Random context frames (B, C, ...) in [-1, 1] and actions (B, C + 1 + frames)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.rand((batch, context, *config.frame_shape), generator=g) * 2 - 1
    actions = torch.randint(0, config.num_actions, (batch, context + 1 + frames), generator=g)
    return ctx.to(device), actions.to(device)


def _window(context: int, frames: int) -> int:
    return context + frames + 2  # room for every frame of one run: no eviction while timing


def _first_frame(model: WorldModel, ctx, actions, steps: int, frames: int, seed: int) -> Streamer:
    """A Streamer that has prefilled the context and made the first frame (what first-frame latency times)."""
    c = ctx.shape[1]
    streamer = Streamer(model, ctx, actions[:, :c], steps=steps, seed=seed, window=_window(c, frames))
    streamer.step(actions[:, c])
    return streamer


def _stream_run(model: WorldModel, ctx, actions, steps: int, frames: int, seed: int) -> Streamer:
    """Prefill + 1 + frames frames, the run that memory is measured on. Returns the Streamer."""
    streamer = _first_frame(model, ctx, actions, steps, frames, seed)
    for i in range(ctx.shape[1] + 1, actions.shape[1]):
        streamer.step(actions[:, i])
    return streamer


# -- memory --------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def memory_probe(spec: dict) -> dict:
    """Run inside a fresh process: peak RSS growth (bytes) of one streaming run, see the module docstring."""
    torch.set_grad_enabled(False)
    bm = load_bench_model(spec["source"], "cpu", spec["seed"])
    ctx, actions = _inputs(bm.model.config, spec["context"], spec["frames"], spec["batch"], spec["seed"], "cpu")
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
        streamer = _stream_run(bm.model, ctx, actions, spec["steps"], spec["frames"], spec["seed"])
    peak = _status_kib("VmHWM")
    return {"peak_bytes": (peak - base) * 1024, "kv_cache_bytes": streamer.stream.cache.nbytes()}


def _peak_memory(bm: BenchModel, device: torch.device, spec: dict) -> dict:
    if device.type == "cuda":
        ctx, actions = _inputs(bm.model.config, spec["context"], spec["frames"], spec["batch"], spec["seed"], device)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=spec["bf16"]):
            _stream_run(bm.model, ctx, actions, spec["steps"], spec["frames"], spec["seed"])
        sync(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "measure": "torch.cuda.max_memory_allocated growth over one streaming run"}
    if not os.path.exists("/proc/self/clear_refs"):
        raise ValueError("CPU peak memory needs Linux /proc (VmHWM, clear_refs); pass --no-memory")
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = "import json, sys; from scd.bench import memory_probe; print(json.dumps(memory_probe(json.load(sys.stdin))))"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps({**spec, "source": bm.source}),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {bm.label} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["measure"] = "peak RSS (VmHWM) growth over one streaming run, fresh subprocess, CPU"
    return result


# -- timing --------------------------------------------------------------------------------------------------
def bench(
    models: list[BenchModel],
    contexts: list[int],
    steps: int = 20,
    batch: int = 1,
    frames: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    bf16: bool = False,
    memory: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Time an SCD model and a Causal DiT side by side; returns the report dict (see `format_table`).

    models: exactly one with arch "scd" and one with arch "causal_dit" (ratios are DiT / SCD).
    contexts: context lengths C >= 1 (frames prefilled before the first generated frame)."""
    from tqdm import tqdm

    archs = sorted(m.model.config.arch for m in models)
    if archs != ["causal_dit", "scd"]:
        raise ValueError(f"bench needs one scd and one causal_dit model, got archs {archs}")
    for name, value, low in (("steps", steps, 1), ("batch", batch, 1), ("frames", frames, 1),
                             ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not contexts or min(contexts) < 1:
        raise ValueError(f"context lengths must be >= 1, got {contexts}")
    if models[0].label == models[1].label:
        raise ValueError(f"both models are labelled {models[0].label!r}; give them different names")
    shapes = {m.model.config.frame_shape for m in models}
    if len(shapes) != 1:
        raise ValueError(f"the models take different frame shapes {sorted(shapes)}; bench needs matched inputs")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but torch sees no CUDA device")
    for m in models:
        m.model.to(dev).eval()
    by_arch = {m.model.config.arch: m for m in models}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    report = {
        "format": FORMAT,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": os.getloadavg()[0]},  # other processes competing for the cores
        "torch": torch.__version__,
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "steps": steps, "batch": batch, "frames": frames, "repeats": repeats, "warmup": warmup,
        "models": [
            {"label": m.label, "source": m.source, "arch": m.model.config.arch,
             "params": sum(p.numel() for p in m.model.parameters()),
             "weights": "random (preset initialisation)" if m.source in PRESETS else "checkpoint",
             "block_passes_per_frame": m.model.block_passes(steps)}
            for m in models
        ],
        "runs": [],
    }
    total = len(contexts) * (warmup + repeats) * len(models) * (1 + frames)
    bar = tqdm(total=total, unit="frame", desc="bench", disable=not progress, file=sys.stderr)
    for c in contexts:
        ctx, actions = _inputs(models[0].model.config, c, frames, batch, seed, dev)
        first = {m.label: [] for m in models}
        per_frame = {m.label: [] for m in models}
        kv_bytes = {}
        with torch.no_grad(), autocast:
            for r in range(warmup + repeats):
                order = models if r % 2 == 0 else models[::-1]
                streamers = {}
                for m in order:
                    streamers[m.label], seconds = timed(lambda: _first_frame(m.model, ctx, actions, steps, frames,
                                                                             seed), dev)
                    if r >= warmup:
                        first[m.label].append(seconds)
                    bar.update()
                for j in range(frames):
                    for m in order:
                        _, seconds = timed(lambda: streamers[m.label].step(actions[:, c + 1 + j]), dev)
                        if r >= warmup:
                            per_frame[m.label].append(seconds)
                        bar.update()
                for label, s in streamers.items():
                    if s.stream.cache.evicted_frames:
                        raise RuntimeError(f"{label}: the KV cache evicted frames while timing (window too small)")
                    kv_bytes[label] = s.stream.cache.nbytes()
                del streamers
        histories = list(range(c + 1, c + 1 + frames))
        run = {"context": c, "histories": [histories[0], histories[-1]], "models": {}}
        spec = dict(context=c, frames=frames, batch=batch, steps=steps, seed=seed, bf16=bf16)
        for m in models:
            flops = statistics.mean(m.model.frame_flops(steps, h, batch)["total"] for h in histories)
            spf = statistics.median(per_frame[m.label])
            entry = {
                "first_frame_s": statistics.median(first[m.label]),
                "s_per_frame": spf,
                "fps": batch / spf,
                "flops_per_frame": flops,
                "achieved_gflops": flops / spf / 1e9,
                "block_passes_per_frame": m.model.block_passes(steps),
                "kv_cache_bytes": kv_bytes[m.label],
                "kv_cache_frames": m.model.cache_frames(_window(c, frames)),
                "first_frame_times": first[m.label],
                "frame_times": per_frame[m.label],
            }
            if memory:
                mem = _peak_memory(m, dev, spec)
                entry.update(peak_memory_bytes=mem["peak_bytes"], peak_memory_measure=mem["measure"])
            run["models"][m.label] = entry
        dit, scd = run["models"][by_arch["causal_dit"].label], run["models"][by_arch["scd"].label]
        run["ratio_dit_over_scd"] = {
            "s_per_frame": dit["s_per_frame"] / scd["s_per_frame"],
            "first_frame": dit["first_frame_s"] / scd["first_frame_s"],
            "expected_block_passes": dit["block_passes_per_frame"] / scd["block_passes_per_frame"],
            "expected_flops": dit["flops_per_frame"] / scd["flops_per_frame"],
            "kv_cache_bytes": dit["kv_cache_bytes"] / scd["kv_cache_bytes"],
        }
        if memory:
            run["ratio_dit_over_scd"]["peak_memory"] = dit["peak_memory_bytes"] / max(scd["peak_memory_bytes"], 1)
        report["runs"].append(run)
    bar.close()
    report["load_average_1min"]["end"] = os.getloadavg()[0]
    return report


# -- output --------------------------------------------------------------------------------------------------
def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def format_table(report: dict) -> str:
    """The report as a plain-text table (one block per context length) with the DiT / SCD ratios."""
    models = {m["label"]: m for m in report["models"]}
    lines = [
        f"scd bench: S={report['steps']} steps, batch {report['batch']}, {report['device']} "
        f"({report['threads']} threads), {report['dtype']}, torch {report['torch']}; s/frame = median of "
        f"{report['repeats']} x {report['frames']} frames, models interleaved, {report['warmup']} warm-up repeat(s)",
        "weights: " + ", ".join(f"{m['label']} {m['weights']}" for m in report["models"]),
        f"machine: {report['cpu_count']} cores, 1-min load average {report['load_average_1min']['start']:.1f} at "
        f"the start, {report['load_average_1min'].get('end', float('nan')):.1f} at the end (above 0 = other "
        f"processes compete: slower, noisier timings)",
        "",
        f"{'context':>7} {'model':<16} {'params':>7} {'BP/F':>5} {'GFLOP/F':>8} {'first s':>8} {'s/frame':>8} "
        f"{'FPS':>6} {'GFLOP/s':>8} {'KV MB':>7} {'peak MB':>8}",
    ]
    for run in report["runs"]:
        hist = f"{run['context']}"
        for label, e in run["models"].items():
            m = models[label]
            name = f"{label} ({'scd' if m['arch'] == 'scd' else 'dit'})"
            lines.append(
                f"{hist:>7} {name:<16} {m['params'] / 1e6:>6.1f}M {e['block_passes_per_frame']:>5} "
                f"{e['flops_per_frame'] / 1e9:>8.2f} {e['first_frame_s']:>8.3f} {e['s_per_frame']:>8.4f} "
                f"{e['fps']:>6.2f} {e['achieved_gflops']:>8.1f} {_mb(e['kv_cache_bytes']):>7} "
                f"{_mb(e.get('peak_memory_bytes')):>8}"
            )
            hist = ""
        r = run["ratio_dit_over_scd"]
        mem = f", peak memory {r['peak_memory']:.2f}x" if "peak_memory" in r else ""
        lines.append(
            f"{'':>7} DiT/SCD: s/frame {r['s_per_frame']:.2f}x measured vs expected {r['expected_block_passes']:.2f}x "
            f"(block passes) / {r['expected_flops']:.2f}x (FLOPs); first frame {r['first_frame']:.2f}x; "
            f"KV cache {r['kv_cache_bytes']:.2f}x{mem}"
        )
        lines.append(f"{'':>7} (history {run['histories'][0]}..{run['histories'][1]} frames while timing)")
    first = report["runs"][0]["models"] if report["runs"] else {}
    measure = next((e.get("peak_memory_measure") for e in first.values() if "peak_memory_measure" in e), None)
    lines.append("")
    lines.append("first s: prefill of the context + first frame. KV MB: KVCache.nbytes() for the timing window "
                 "(context + frames + 3 frames).")
    if measure:
        lines.append(f"peak MB: {measure}.")
    return "\n".join(lines)
