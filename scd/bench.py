"""`scd bench`: streaming speed and memory of SCD against a Causal DiT of matched size, in one run, and how far
both are from what the machine can do.

    scd bench                                  # scd-s vs dit-s, S=20, batch 1, context 16
    scd bench --context 16 128 --json          # several context lengths; JSON instead of the table
    scd bench --compile --bf16                 # also the compiled per-frame step; bf16 autocast and its effect
    scd bench --checkpoint runs/scd-xs         # a trained model replaces the preset of its architecture
    scd bench --device cuda --cfg 1.5          # on a GPU (CUDA graphs under --compile), with guidance

What is measured, per context length C (both models use the real streaming path, `scd.sampling.Streamer`, with a
window of C frames: every frame sees exactly C past frames and the KV cache is full, its steady state):

- first-frame latency: building the Streamer (prefill of C random context frames) + rendering the first frame;
- seconds per frame: the median time of `Streamer.step` over the `frames` frames after the first one, over
  `repeats` repeats; frames per second = batch / (seconds per frame);
- the models are interleaved frame by frame (A B A B ..., the order flips every repeat) so that all see the same
  machine load; `warmup` whole repeats run first and are not recorded (with --compile they compile the step). On
  CUDA every timing is bracketed by torch.cuda.synchronize();
- with `compile`, each model runs twice, eager and with the compiled step (`Streamer(compile=True)`);
- achieved GFLOP/s = the FLOPs of one frame (below) / seconds per frame, and its share of the machine's matmul peak:
  the best GFLOP/s of a large square matmul at the model's dtype (fp32, or bf16 under --bf16), measured by the
  bench at its start with the same threads;
- the Python/dispatch share: `profile_frames` frames of each model under torch.profiler; the share of their wall
  time spent outside the leaf ops (aten kernels and compiled kernels; on CUDA, outside the GPU's kernels): Python,
  dispatch, guards and launches. Ops per frame counts the leaf ops;
- KV cache: `KVCache.nbytes()` of the stream: SCD caches its l encoder blocks, the Causal DiT all L blocks;
- peak memory (eager step): on CUDA, torch.cuda.max_memory_allocated() growth over one streaming run (prefill +
  frames); on CPU, the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over the
  resident set after building the model and its inputs, for one streaming run in a fresh subprocess per model
  (weights excluded; activations, KV cache, allocator and library workspaces included);
- with bf16: the effect of bf16 on the frames, the PSNR (dB, frames in [-1, 1]) of the bf16 rollout against the
  fp32 rollout from the same inputs and seed (eager; meaningful with trained checkpoints).

Expected cost per frame, as each model answers it: block passes per frame (`block_passes`) and the FLOPs of
every matmul (QKV, projection, MLP, adaLN, embedding, head, time MLP) plus attention over the keys each query
sees (`frame_flops`, with the full cache): the Causal DiT's noisy frame attends its history and itself at each of
the S steps and once more in the pass that caches the finished frame; SCD's encoder slot attends the history once,
and its decoder attends the 2P tokens [c_i ; x_i] at each step. Preset models have their initial (random) weights:
fine for speed.

The report records the machine's load average: on a shared CPU, more torch threads than idle cores make every
parallel op wait for descheduled threads, which slows both models and pulls the measured ratio towards the
block-pass ratio (the cost then follows the number of ops, not their FLOPs).
"""

from __future__ import annotations

import json
import math
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
from .sampling import Guidance, Streamer, generate
from .timing import sync, timed

FORMAT = "scd-bench-v2"


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


def _guidance(scale: float | None) -> Guidance | None:
    """The guidance a bench run streams with: classifier-free guidance whose negative branch drops the action
    (both models run both branches in every pass), or none."""
    return None if scale is None else Guidance(scale=scale, null_action=True)


def _first_frame(model: WorldModel, ctx, actions, steps: int, seed: int, compile: bool = False,
                 guidance: float | None = None) -> Streamer:
    """A Streamer with a window of C frames that has prefilled the C context frames and made the first frame (what
    first-frame latency times)."""
    c = ctx.shape[1]
    streamer = Streamer(model, ctx, actions[:, :c], steps=steps, seed=seed, window=c, compile=compile,
                        guidance=_guidance(guidance))
    streamer.step(actions[:, c])
    return streamer


def _stream_run(model: WorldModel, ctx, actions, steps: int, seed: int, guidance: float | None = None) -> Streamer:
    """Prefill + the first frame + the frames after it, the run that memory is measured on. Returns the Streamer."""
    streamer = _first_frame(model, ctx, actions, steps, seed, guidance=guidance)
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
        streamer = _stream_run(bm.model, ctx, actions, spec["steps"], spec["seed"], spec["guidance"])
    peak = _status_kib("VmHWM")
    return {"peak_bytes": (peak - base) * 1024, "kv_cache_bytes": streamer.stream.cache.nbytes()}


def _peak_memory(bm: BenchModel, device: torch.device, spec: dict) -> dict:
    if device.type == "cuda":
        ctx, actions = _inputs(bm.model.config, spec["context"], spec["frames"], spec["batch"], spec["seed"], device)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=spec["bf16"]):
            _stream_run(bm.model, ctx, actions, spec["steps"], spec["seed"], spec["guidance"])
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


# -- the machine and the profile -----------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    """The best GFLOP/s of a square (size x size) matmul at `dtype` on `device` with torch's threads: the machine's
    matmul peak that achieved GFLOP/s are a share of (size: 2048 on a CPU, 8192 on a GPU)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)  # warm-up: kernel choice, workspaces
    best = min(timed(lambda: torch.mm(a, b, out=out), device)[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def dispatch_profile(step, frames: int, device: torch.device) -> dict:
    """Run step() `frames` times under torch.profiler: the share of the wall time outside the leaf ops (aten kernels
    and compiled kernels; on CUDA, outside the GPU's kernels) and the leaf ops per frame."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        _, wall = timed(lambda: [step() for _ in range(frames)], device)
    events = prof.events()
    leaves = [e for e in events if not e.cpu_children and (e.name.startswith("aten::") or "fused" in e.name)]
    if cuda:  # the GPU's kernel events
        busy = sum(e.device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
    else:
        busy = sum(e.self_cpu_time_total for e in leaves) / 1e6
    return {"python_share": max(0.0, 1 - busy / wall), "ops_per_frame": len(leaves) / frames}


# -- timing --------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One timed row: a model with the eager or the compiled per-frame step."""

    bench_model: BenchModel
    compile: bool

    @property
    def label(self) -> str:
        return self.bench_model.label + ("+compile" if self.compile else "")

    @property
    def model(self) -> WorldModel:
        return self.bench_model.model


def bf16_effect(model: WorldModel, ctx, actions, steps: int, seed: int, guidance: float | None = None) -> dict:
    """PSNR (dB, frames in [-1, 1]) and the largest difference of the bf16 rollout against the fp32 one, from the
    same inputs and seed."""
    c = ctx.shape[1]
    frames = {}
    for bf16 in (False, True):
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            frames[bf16] = generate(model, ctx, actions, steps=steps, seed=seed, window=c,
                                    guidance=_guidance(guidance)).float()
    mse = (frames[True] - frames[False]).pow(2).mean().item()
    return {"bf16_psnr_db": 10 * math.log10(4 / mse) if mse > 0 else math.inf,
            "bf16_max_abs": (frames[True] - frames[False]).abs().max().item()}


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
    compile: bool = False,
    profile_frames: int = 2,
    guidance: float | None = None,
) -> dict:
    """Time an SCD model and a Causal DiT side by side (with compile, each also with the compiled step); returns
    the report dict (see `format_table`).

    models: exactly one with arch "scd" and one with arch "causal_dit" (ratios are DiT / SCD).
    contexts: context lengths C >= 1 (frames prefilled before the first generated frame, and the window).
    guidance: a classifier-free guidance scale (negative branch: the null action), or None for none."""
    from tqdm import tqdm

    archs = sorted(m.model.config.arch for m in models)
    if archs != ["causal_dit", "scd"]:
        raise ValueError(f"bench needs one scd and one causal_dit model, got archs {archs}")
    for name, value, low in (("steps", steps, 1), ("batch", batch, 1), ("frames", frames, 1),
                             ("repeats", repeats, 1), ("warmup", warmup, 0), ("profile_frames", profile_frames, 0)):
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
    if compile and dev.type == "cpu":  # compiled C++ kernels show up in the profile (set before they compile)
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    variants = [Variant(m, False) for m in models] + ([Variant(m, True) for m in models] if compile else [])
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    dtype = torch.bfloat16 if bf16 else next(models[0].model.parameters()).dtype
    branches = 1 if guidance is None else 2  # guidance runs both branches in every pass (the FLOPs count them)

    report = {
        "format": FORMAT,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": os.getloadavg()[0]},  # other processes competing for the cores
        "torch": torch.__version__,
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "steps": steps, "batch": batch, "frames": frames, "repeats": repeats, "warmup": warmup,
        "compile": compile, "profile_frames": profile_frames, "guidance": guidance,
        "matmul_peak_gflops": matmul_peak(dev, dtype),
        "models": [
            {"label": m.label, "source": m.source, "arch": m.model.config.arch,
             "params": sum(p.numel() for p in m.model.parameters()),
             "weights": "random (preset initialisation)" if m.source in PRESETS else "checkpoint",
             "block_passes_per_frame": m.model.block_passes(steps)}
            for m in models
        ],
        "runs": [],
    }
    total = len(contexts) * (warmup + repeats) * len(variants) * (1 + frames)
    bar = tqdm(total=total, unit="frame", desc="bench", disable=not progress, file=sys.stderr)
    for c in contexts:
        ctx, actions = _inputs(models[0].model.config, c, frames, batch, seed, dev)
        first = {v.label: [] for v in variants}
        per_frame = {v.label: [] for v in variants}
        kv_bytes, profiles = {}, {}
        with torch.no_grad(), autocast:
            for r in range(warmup + repeats):
                order = variants if r % 2 == 0 else variants[::-1]
                streamers = {}
                for v in order:
                    streamers[v.label], seconds = timed(lambda: _first_frame(v.model, ctx, actions, steps, seed,
                                                                             v.compile, guidance), dev)
                    if r >= warmup:
                        first[v.label].append(seconds)
                    bar.update()
                for j in range(frames):
                    for v in order:
                        _, seconds = timed(lambda: streamers[v.label].step(actions[:, c + 1 + j]), dev)
                        if r >= warmup:
                            per_frame[v.label].append(seconds)
                        bar.update()
                kv_bytes = {label: s.stream.cache.nbytes() for label, s in streamers.items()}
                del streamers
            for v in variants if profile_frames else []:
                streamer = _first_frame(v.model, ctx, actions, steps, seed, v.compile, guidance)
                profiles[v.label] = dispatch_profile(lambda: streamer.step(actions[:, c + 1]), profile_frames, dev)
        run = {"context": c, "window": c, "models": {}}
        spec = dict(context=c, frames=frames, batch=batch, steps=steps, seed=seed, bf16=bf16, guidance=guidance)
        for v in variants:
            m = v.model
            flops = m.frame_flops(steps, m.cache_frames(c) - 1, batch, branches)["total"]  # a full cache
            spf = statistics.median(per_frame[v.label])
            entry = {
                "model": v.bench_model.label,
                "compile": v.compile,
                "first_frame_s": statistics.median(first[v.label]),
                "s_per_frame": spf,
                "fps": batch / spf,
                "flops_per_frame": flops,
                "achieved_gflops": flops / spf / 1e9,
                "peak_share": flops / spf / 1e9 / report["matmul_peak_gflops"],
                "block_passes_per_frame": m.block_passes(steps),
                "kv_cache_bytes": kv_bytes[v.label],
                "kv_cache_frames": m.cache_frames(c),
                "first_frame_times": first[v.label],
                "frame_times": per_frame[v.label],
                **profiles.get(v.label, {}),
            }
            if memory and not v.compile:
                mem = _peak_memory(v.bench_model, dev, spec)
                entry.update(peak_memory_bytes=mem["peak_bytes"], peak_memory_measure=mem["measure"])
            if bf16 and not v.compile:
                entry.update(bf16_effect(m, ctx, actions[:, : c + 1 + frames], steps, seed, guidance))
            run["models"][v.label] = entry
        by_arch = {v.model.config.arch: v.label for v in variants if not v.compile}
        run["ratio_dit_over_scd"] = _ratios(run["models"][by_arch["causal_dit"]], run["models"][by_arch["scd"]])
        if compile:
            dit, scd = (run["models"][by_arch[a] + "+compile"] for a in ("causal_dit", "scd"))
            run["ratio_dit_over_scd_compiled"] = _ratios(dit, scd)
            run["compile_speedup"] = {v.bench_model.label: run["models"][v.bench_model.label]["s_per_frame"]
                                      / run["models"][v.label]["s_per_frame"] for v in variants if v.compile}
        report["runs"].append(run)
    bar.close()
    report["load_average_1min"]["end"] = os.getloadavg()[0]
    return report


def _ratios(dit: dict, scd: dict) -> dict:
    """DiT / SCD of the measured and expected costs of two entries."""
    ratios = {
        "s_per_frame": dit["s_per_frame"] / scd["s_per_frame"],
        "first_frame": dit["first_frame_s"] / scd["first_frame_s"],
        "expected_block_passes": dit["block_passes_per_frame"] / scd["block_passes_per_frame"],
        "expected_flops": dit["flops_per_frame"] / scd["flops_per_frame"],
        "kv_cache_bytes": dit["kv_cache_bytes"] / scd["kv_cache_bytes"],
    }
    if "peak_memory_bytes" in dit:
        ratios["peak_memory"] = dit["peak_memory_bytes"] / max(scd["peak_memory_bytes"], 1)
    return ratios


# -- output --------------------------------------------------------------------------------------------------
def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def format_table(report: dict) -> str:
    """The report as a plain-text table (one block per context length) with the DiT / SCD ratios."""
    models = {m["label"]: m for m in report["models"]}
    lines = [
        f"scd bench: S={report['steps']} steps"
        + (f", guidance {report['guidance']} (both branches)" if report.get("guidance") is not None else "")
        + f", batch {report['batch']}, {report['device']} "
        f"({report['threads']} threads), {report['dtype']}, torch {report['torch']}; s/frame = median of "
        f"{report['repeats']} x {report['frames']} frames, models interleaved, {report['warmup']} warm-up repeat(s)",
        "weights: " + ", ".join(f"{m['label']} {m['weights']}" for m in report["models"]),
        f"machine: {report['cpu_count']} cores, 1-min load average {report['load_average_1min']['start']:.1f} at "
        f"the start, {report['load_average_1min'].get('end', float('nan')):.1f} at the end (above 0 = other "
        f"processes compete: slower, noisier timings); matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s "
        f"({report['dtype']})",
        "",
        f"{'context':>7} {'model':<22} {'params':>7} {'BP/F':>5} {'GFLOP/F':>8} {'first s':>8} {'s/frame':>8} "
        f"{'FPS':>6} {'GFLOP/s':>8} {'peak':>5} {'python':>6} {'ops/F':>6} {'KV MB':>7} {'peak MB':>8}"
        + (f" {'bf16 PSNR':>9}" if report["dtype"] != "fp32" else ""),
    ]
    for run in report["runs"]:
        hist = f"{run['context']}"
        for label, e in run["models"].items():
            m = models[e["model"]]
            name = f"{label} ({'scd' if m['arch'] == 'scd' else 'dit'})"
            ops = f"{e['ops_per_frame']:.0f}" if "ops_per_frame" in e else "-"
            lines.append(
                f"{hist:>7} {name:<22} {m['params'] / 1e6:>6.1f}M {e['block_passes_per_frame']:>5} "
                f"{e['flops_per_frame'] / 1e9:>8.2f} {e['first_frame_s']:>8.3f} {e['s_per_frame']:>8.4f} "
                f"{e['fps']:>6.2f} {e['achieved_gflops']:>8.1f} {_share(e['peak_share']):>5} "
                f"{_share(e.get('python_share')):>6} {ops:>6} {_mb(e['kv_cache_bytes']):>7} "
                f"{_mb(e.get('peak_memory_bytes')):>8}"
                + (f" {e['bf16_psnr_db']:>9.1f}" if "bf16_psnr_db" in e else "")
            )
            hist = ""
        for key, kind in (("ratio_dit_over_scd", ""), ("ratio_dit_over_scd_compiled", " (compiled)")):
            if key not in run:
                continue
            r = run[key]
            mem = f", peak memory {r['peak_memory']:.2f}x" if "peak_memory" in r else ""
            lines.append(
                f"{'':>7} DiT/SCD{kind}: s/frame {r['s_per_frame']:.2f}x measured vs expected "
                f"{r['expected_block_passes']:.2f}x (block passes) / {r['expected_flops']:.2f}x (FLOPs); first frame "
                f"{r['first_frame']:.2f}x; KV cache {r['kv_cache_bytes']:.2f}x{mem}"
            )
        if "compile_speedup" in run:
            lines.append(f"{'':>7} compile speed-up (eager s/frame / compiled): "
                         + ", ".join(f"{label} {x:.2f}x" for label, x in run["compile_speedup"].items()))
    first = report["runs"][0]["models"] if report["runs"] else {}
    measure = next((e.get("peak_memory_measure") for e in first.values() if "peak_memory_measure" in e), None)
    lines.append("")
    lines.append("window = context: every frame sees C past frames (a full KV cache). first s: prefill of the context "
                 "+ first frame. peak: achieved GFLOP/s over the matmul peak. python: share of the wall time outside "
                 f"the leaf ops over {report['profile_frames']} profiled frames (Python, dispatch, guards); ops/F: "
                 "leaf ops per frame. KV MB: KVCache.nbytes().")
    if measure:
        lines.append(f"peak MB (eager step): {measure}.")
    if report["dtype"] != "fp32":
        lines.append("bf16 PSNR: dB of the bf16 rollout against the fp32 one from the same inputs and seed (eager).")
    return "\n".join(lines)
