"""`scd eval`: frame metrics and FVD of rollouts on held-out videos (the FAR / SCD evaluation protocol).

    scd eval --checkpoint runs/scd                                  # crafter-bench, context 36, 4 trajectories
    scd eval --checkpoint runs/scd --checkpoint runs/dit --out out/eval-both   # side by side in one table
    scd eval --checkpoint runs/scd --context 8 --horizon 32 --videos 4 --no-fvd # a quick look

Protocol, for each of the first `videos` episodes of the data set:
  1. the frames start .. start+C-1 are the given context; the recorded actions drive the next H frames;
  2. `trajectories` = N rollouts are drawn at once (`rollout(..., num_samples=N)`, seed `seed * 100000 + episode`,
     so a video's trajectories do not depend on which other videos were evaluated);
  3. the recorded context frames go through the model's codec (model.codec: pixels, or a latent codec), generated
     frames are decoded by it to pixels, clamped to [-1, 1] and scored against the recorded ones, frame by frame,
     on the tensors (no video-file round trip): PSNR and SSIM (scd.metrics, data range 1) and LPIPS with AlexNet;
  4. best of N, per video and per metric, as in FAR's code: the trajectory with the best horizon-averaged value
     (max PSNR, max SSIM, min LPIPS) is picked, separately for each metric; its per-frame values make the
     best-of-N curve. "mean" averages all N trajectories instead. Both are then averaged over videos;
  5. FVD (Kinetics-400 I3D, StyleGAN-V convention) compares whole clips, the context included: the V recorded
     clips of C+H frames against the V*N clips made of the same context followed by each trajectory; and, per
     window of generated frames (1-16 and the last 16), the recorded frames of that window against the generated
     ones, so that a worse FVD can be placed early or late in the rollout. I3D needs >= 9 frames and the Frechet
     distance >= 2 videos. The paper's FVD uses 256 videos; with a few videos the score is noisy and biased
     upward, so compare models only on the same videos and settings;
  6. drift, per frame and averaged over trajectories: the colour-histogram distance to the recorded frame
     (scd.metrics.color_histogram_distance, 0 = same colours) and the sharpness ratio (mean |Laplacian| of the
     generated frame over the recorded one's: < 1 blurrier, > 1 noisier) and the motion gap (mean |change| of
     each generated frame from the one before it, minus the recorded video's: < 0 the rollout moves less than the
     real play, > 0 it flickers);
  7. the trivial baselines (scd.baselines: copy the last context frame, the per-pixel context mean) are scored on
     the same clips and stand in every table and plot; window means over frames 1-16 and over the last 16 frames
     summarise short-term quality and long-term drift.

Outputs in --out: metrics.json (settings, per-model summary, per-horizon-frame curves, per-video values),
metrics.md (tables) and metrics.png (each metric against the prediction horizon). Every (model, video) result is
saved as soon as it is done (videos/<label>/episode_NNNN.json, atomic writes); a rerun with the same settings
skips the finished ones, and results made with other settings, weights or data are refused (or, with --fresh,
discarded).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_identity, load_model
from .config import is_shift, is_temperature
from .baselines import BASELINES
from .fileio import atomic_write, atomic_write_text, sha256_file
from .metrics.scores import DRIFT_METRICS, LPIPS_NET, METRICS, frame_scores
from .plots import pyplot, save_figure
from .sampling import Guidance, rollout
from .timing import timed

FORMAT = "scd-eval-v3"
VIDEO_FORMAT = "scd-eval-video-v3"
DEFAULT_DATA = "data/crafter-bench"
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
TITLES = {"psnr": "PSNR (dB, higher is better)", "ssim": "SSIM (higher is better)",
          "lpips": "LPIPS-AlexNet (lower is better)",
          "color_hist": "colour-histogram distance to real (lower is better)",
          "sharpness": "sharpness / real (1 = as sharp; <1 blurred, >1 noisy)",
          "motion": "motion - real motion (0 = moves as real; <0 freezes)"}
WINDOW = 16  # frames in the window means (first 16 and last 16 generated frames)
SHEET_VIDEOS = 4  # videos shown in contact_sheet.png
I3D_MIN_FRAMES = 9


@dataclass(frozen=True)
class EvalSettings:
    """Everything that changes the numbers (and so must match for a resumed evaluation).

    context C >= 1 given frames; horizon H >= 1 generated frames (None: the rest of the shortest evaluated
    episode after start + C); trajectories N >= 1 per video; start: first context frame in each episode;
    steps/shift/temperature: Euler sampler (None: each model's own defaults); cfg_*: classifier-free guidance as
    in `scd generate` (scale 1 = off); window: past frames the next frame sees (None: all; a model trained on
    clips of F frames stays within the frame distances it saw with window = F - 1); teacher_forcing: each frame
    rendered from the recorded history (the baselines then copy, or average, the C recorded frames before it)."""

    context: int = 36
    horizon: int | None = None
    trajectories: int = 4
    start: int = 0
    steps: int | None = None  # None: each model's own config.sample_steps
    shift: float | None = None  # None: each model's own config.sample_shift
    cfg_scale: float = 1.0
    cfg_null_action: bool = False
    cfg_context_noise: float = 0.0
    seed: int = 0
    fvd: bool = True
    bf16: bool = False
    window: int | None = None
    history_noise: float | None = None  # flow time of the history frames (None: the model's own setting)
    temperature: float | None = None  # starting-noise std (None: each model's own config.sample_temperature)
    # every generated frame from the recorded frames before it (one step ahead) instead of the model's own; the
    # gap to the rollout's curves is the exposure bias, per horizon
    teacher_forcing: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("context", 1), ("trajectories", 1), ("start", 0), ("steps", 1), ("seed", 0)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                problems.append(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.horizon is not None and self.horizon < 1:
            problems.append(f"horizon must be >= 1, got {self.horizon}")
        if self.shift is not None and not is_shift(self.shift):
            problems.append(f"shift must be a finite number > 0, got {self.shift!r}")
        if self.temperature is not None and not is_temperature(self.temperature):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.window is not None and self.window < self.context:
            problems.append(f"window ({self.window}) must hold the context ({self.context} frames)")
        if problems:
            raise ValueError("invalid evaluation settings: " + "; ".join(problems))
        self.guidance()  # raises if the guidance options do not fit together

    def guidance(self) -> Guidance | None:
        if self.cfg_scale == 1.0:
            return None
        return Guidance(self.cfg_scale, null_action=self.cfg_null_action, context_noise=self.cfg_context_noise)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- data and models -----------------------------------------------------------------------------------------
def open_eval_data(path: str | Path):
    """The held-out data set (scd-video-v1); a missing folder names the command that records the benchmark."""
    from .data.store import VideoStore

    if not Path(path).exists():
        raise FileNotFoundError(
            f"evaluation data {path} not found; record the benchmark split with "
            f"`scd data record --benchmark crafter-bench --out {path}` (about 1.5 minutes) or pass --data DIR"
        )
    return VideoStore(path)


def _default_labels(checkpoints: list[str]) -> list[str]:
    labels = []
    for c in checkpoints:
        p = Path(c).resolve()
        label = f"{p.parent.name}-{p.name}" if p.name.startswith("ckpt-") else p.name
        base, k = label, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def _check_model_fits(model, label: str, store) -> None:
    """The model's codec must take the data set's frames (a pixel model: frames of its size)."""
    try:
        model.codec.check_pixel_shape(store.frame_shape, f"the data set {store.path}")
    except ValueError as err:
        raise ValueError(f"model {label}: {err}") from None
    if store.num_actions > model.config.num_actions:
        raise ValueError(f"data set {store.path} has {store.num_actions} actions, model {label} knows "
                         f"{model.config.num_actions}")


# -- one video -----------------------------------------------------------------------------------------------
def generate_trajectories(model, context: torch.Tensor, actions: torch.Tensor, settings: EvalSettings, seed: int,
                          on_frame=None, compile: bool = False, observed: torch.Tensor | None = None) -> torch.Tensor:
    """context (C, H, W, 3) uint8 recorded frames (or (C, ...) in the model's space), actions (C + horizon,) -> N
    trajectories of pixels (N, horizon, 3, H, W) in [-1, 1], decoded by the model's codec.

    Frames are clamped to [-1, 1] (what writing them as images would do); on_frame() is called per frame;
    compile: the compiled per-frame step (Streamer); observed: the recorded frames after the context, as the
    context's, read as history instead of the generated ones (teacher forcing)."""
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16) if settings.bf16 else nullcontext()
    frames = []
    observed = None if observed is None else observed[None].to(model.device)
    with autocast:
        for frame in rollout(model, context[None].to(model.device), actions[None].to(model.device),
                             observed=observed, steps=settings.steps, shift=settings.shift,
                             guidance=settings.guidance(),
                             num_samples=settings.trajectories, seed=seed, window=settings.window,
                             history_noise=settings.history_noise, temperature=settings.temperature,
                             compile=compile):
            frames.append(frame[0].float().cpu())
            if on_frame is not None:
                on_frame()
    out = torch.stack(frames, dim=1)
    if not torch.isfinite(out).all():
        raise ValueError("the model produced NaN or inf frames")
    return model.codec.decode_pixels(out)  # the pixel codec: the frames clamped to [-1, 1]


def baseline_predictions(baseline, clip: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    """A trivial predictor's "rollout" (1, H, 3, h, w) of a recorded clip (C + H, 3, h, w): from the context, or
    under teacher forcing each frame from the C recorded frames before it."""
    c, horizon = settings.context, settings.horizon
    if not settings.teacher_forcing:
        return baseline(clip[:c], horizon)
    return torch.cat([baseline(clip[i : i + c], 1) for i in range(horizon)], dim=1)


def sheet_horizons(horizon: int) -> list[int]:
    """Prediction horizons (1-based) shown in the contact sheet: powers of two and the last frame."""
    return sorted({h for h in (1, 2, 4, 8, 16, 32, 64, 128, 256) if h <= horizon} | {horizon})


def horizon_windows(horizon: int) -> list[tuple[int, int]]:
    """The (first, last) generated frames, 1-based and inclusive, of the window means: 1-16, and the last 16."""
    windows = [(1, min(WINDOW, horizon))]
    if horizon > WINDOW:
        windows.append((horizon - WINDOW + 1, horizon))
    return windows


def clip_features(videos: torch.Tensor) -> torch.Tensor:
    """(M, T, 3, h, w) in [-1, 1], T >= 9 -> (M, 400) I3D features (the FVD statistic), one video at a time."""
    from .metrics import i3d_features

    return i3d_features(videos, batch_size=1)


# -- aggregation ---------------------------------------------------------------------------------------------
def summarize(records: list[dict]) -> dict:
    """Per-video records of one model -> summary, per-horizon curves, per-video values and FVD.

    Best of N per video and metric: the trajectory whose horizon-mean is best (see the module docstring)."""
    summary, curves, per_video = {}, {}, [{"episode": r["episode"]} for r in records]
    for m in METRICS:
        values = np.array([r["metrics"][m] for r in records], dtype=np.float64)  # (V, N, H)
        traj_mean = values.mean(axis=2)  # (V, N)
        best = traj_mean.argmax(axis=1) if HIGHER_IS_BETTER[m] else traj_mean.argmin(axis=1)
        best_frames = values[np.arange(len(records)), best]  # (V, H)
        curves[m] = {"best": best_frames.mean(axis=0).tolist(), "mean": values.mean(axis=(0, 1)).tolist()}
        summary[m] = {"best": float(best_frames.mean()), "mean": float(values.mean())}
        for v, entry in enumerate(per_video):
            entry[m] = {"best": float(traj_mean[v, best[v]]), "mean": float(traj_mean[v].mean()),
                        "best_trajectory": int(best[v])}
    for m in DRIFT_METRICS:
        values = np.array([r["metrics"][m] for r in records], dtype=np.float64)  # (V, N, H)
        curves[m] = {"mean": values.mean(axis=(0, 1)).tolist()}
        summary[m] = {"mean": float(values.mean())}
        for v, entry in enumerate(per_video):
            entry[m] = {"mean": float(values[v].mean())}
    horizon = len(curves["psnr"]["mean"])
    windows = {f"{a}-{b}": {m: float(np.mean(curves[m]["mean"][a - 1 : b])) for m in METRICS + DRIFT_METRICS}
               for a, b in horizon_windows(horizon)}
    fvd = _fvd([r["i3d_real"] for r in records], [r["i3d_fake"] for r in records])
    for name, window in windows.items():
        real = [(r["i3d_windows_real"] or {}).get(name, [None])[0] for r in records]  # None: FVD off, too short
        window["fvd"] = _fvd(real, [(r["i3d_windows_fake"] or {}).get(name) for r in records])
    return {"summary": summary, "windows": windows, "fvd": fvd, "curves": curves, "per_video": per_video}


def _fvd(real: list, fake: list) -> float | None:
    """Frechet distance of per-video I3D features, real [V x (400,)] against fake [V x (N, 400)]; None where a
    video has none (FVD off, or a window too short for I3D) or with fewer than 2 videos."""
    if len(real) < 2 or any(x is None for x in real + fake):
        return None
    from .metrics import frechet_distance

    return frechet_distance(np.array(real), np.concatenate([np.array(f) for f in fake]))


def window_features(frames: torch.Tensor) -> dict[str, list]:
    """Frames after the context (M, H, 3, h, w) -> {window: (M, 400) I3D features of its frames} for each window
    of `horizon_windows` long enough for I3D."""
    return {f"{a}-{b}": clip_features(frames[:, a - 1 : b]).tolist()
            for a, b in horizon_windows(frames.shape[1]) if b - a + 1 >= I3D_MIN_FRAMES}


# -- resumable results ---------------------------------------------------------------------------------------
def _video_path(out: Path, label: str, episode: int) -> Path:
    return out / "videos" / label / f"episode_{episode:04d}.json"


def _sheet_path(out: Path, label: str, episode: int) -> Path:
    """uint8 frames of the first trajectory at `sheet_horizons`, for the contact sheet."""
    return _video_path(out, label, episode).with_suffix(".npz")


def _load_record(path: Path, expected: dict) -> dict | None:
    """A finished (model, video) result, None if absent; ValueError if it was made differently."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt ({err}); pass --fresh to recompute") from None
    if isinstance(record.get("settings"), dict):  # a setting added since then was at its default (the old behaviour)
        record["settings"] = {**EvalSettings().to_dict(), **record["settings"]}
    different = [k for k, v in expected.items() if record.get(k) != v]
    if different:
        details = []
        for key in different:
            old, new = record.get(key), expected[key]
            if isinstance(old, dict) and isinstance(new, dict):
                details += [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            else:
                details.append(f"{key}: {old!r} -> {new!r}")
        raise ValueError(
            f"{path} was made with other settings ({'; '.join(details)}); rerun with the same settings, "
            f"choose another --out, or pass --fresh to discard the earlier results"
        )
    return record


def evaluate(
    checkpoints: list[str | Path],
    data: str | Path = DEFAULT_DATA,
    out: str | Path = "out/eval",
    settings: EvalSettings = EvalSettings(),
    videos: int | None = None,
    labels: list[str] | None = None,
    fresh: bool = False,
    device: str = "cpu",
    progress: bool = True,
    compile: bool = False,
) -> dict:
    """Evaluate one or more checkpoints on the first `videos` episodes of `data`; writes and returns the report.
    compile: roll out with the compiled per-frame step (the same numbers within float tolerance).

    Returns the metrics.json dict: {"format", "settings", "data", "episodes", "models": [{"label", "checkpoint",
    "arch", "params", "summary": {metric: {"best", "mean"}}, "windows": {"1-16": {metric: mean}, ...}, "fvd",
    "curves": {metric: {"best": [H], "mean": [H]}}, "per_video": [...]}]}; the trivial baselines (arch
    "baseline") follow the models."""
    from tqdm import tqdm

    from .data.store import frames_to_uint8

    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    from .metrics import _weights  # before any rollout: a missing weight file would only fail at the end

    _weights.require(_weights.LPIPS_ALEX if LPIPS_NET == "alex" else _weights.LPIPS_VGG,
                     *([_weights.I3D_K400] if settings.fvd else []))
    labels = list(labels) if labels else _default_labels([str(c) for c in checkpoints])
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per checkpoint, got {labels} for {len(checkpoints)} checkpoints")
    taken = sorted({b.label for b in BASELINES} & set(labels))
    if taken:
        raise ValueError(f"labels {taken} name the baselines; choose other --label values")
    store = open_eval_data(data)
    n_videos = store.num_episodes if videos is None else videos
    if not 1 <= n_videos <= store.num_episodes:
        raise ValueError(f"--videos must be in 1..{store.num_episodes} ({store.path} has {store.num_episodes} "
                         f"episodes), got {n_videos}")
    episodes = list(range(n_videos))
    shortest = min(store.meta.episodes[i].length for i in episodes)
    room = shortest - settings.start - settings.context
    if settings.horizon is None:
        if room < 1:
            raise ValueError(f"the shortest evaluated episode has {shortest} frames: no room for a horizon after "
                             f"--start {settings.start} + --context {settings.context}")
        settings = dataclasses.replace(settings, horizon=room)
    elif settings.horizon > room:
        raise ValueError(f"the shortest evaluated episode has {shortest} frames; --start {settings.start} + "
                         f"--context {settings.context} + --horizon {settings.horizon} do not fit")
    clip_len = settings.context + settings.horizon
    if settings.fvd and clip_len < I3D_MIN_FRAMES:
        raise ValueError(f"FVD needs clips of >= {I3D_MIN_FRAMES} frames (I3D), got context + horizon = {clip_len}; "
                         f"lengthen them or pass --no-fvd")
    if settings.fvd and n_videos < 2:
        raise ValueError("FVD needs at least 2 videos (a covariance per set); use --videos >= 2 or pass --no-fvd")

    models = []
    for ckpt, label in zip(checkpoints, labels):
        model = load_model(ckpt, device=device)
        _check_model_fits(model, label, store)
        models.append((label, model, checkpoint_identity(ckpt)))
    for baseline in BASELINES:
        models.append((baseline.label, baseline,
                       {"path": None, "weights": None, "sha256": f"baseline:{baseline.label}", "step": None}))

    out = Path(out)
    data_info = {"path": str(store.path.resolve()), "meta_sha256": sha256_file(store.path / "meta.json")}
    done: dict[tuple[str, int], dict] = {}
    for label, model, ident in models:
        folder = out / "videos" / label
        if fresh and folder.exists():
            stale = len(list(folder.glob("*.json")))
            print(f"--fresh: discarding {stale} earlier results in {folder}", file=sys.stderr)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        expected = {"format": VIDEO_FORMAT, "settings": settings.to_dict(), "data": data_info,
                    "checkpoint_sha256": ident["sha256"]}
        for ep in episodes:
            record = _load_record(_video_path(out, label, ep), expected)
            if record is not None:
                done[label, ep] = record
    todo = [(label, ep) for ep in episodes for label, _, _ in models if (label, ep) not in done]
    if done:
        print(f"resuming: {len(done)} of {len(done) + len(todo)} (model, video) results already in {out}",
              file=sys.stderr)

    bar = tqdm(total=len(todo) * settings.horizon, unit="frame", desc="eval", disable=not progress, file=sys.stderr)
    for ep in episodes:
        pending = [(label, model, ident) for label, model, ident in models if (label, ep) not in done]
        if not pending:
            continue
        clip, actions = store.clip(ep, settings.start, clip_len)  # pixels (C + H, 3, h, w) in [-1, 1], (C + H,)
        context, target = clip[: settings.context], clip[settings.context :]
        first = settings.start
        recorded = torch.from_numpy(np.array(store.episode(ep)[0][first : first + clip_len]))  # uint8 (C + H, h, w, 3)
        observed = recorded[settings.context :] if settings.teacher_forcing else None
        real_features = real_windows = None
        if settings.fvd:  # the recorded clip's features, shared by every model
            known = [done[lab, ep] for lab, _, _ in models if (lab, ep) in done]
            real_features = known[0]["i3d_real"] if known else clip_features(clip[None])[0].tolist()
            real_windows = known[0]["i3d_windows_real"] if known else window_features(target[None])
        for label, model, ident in pending:
            bar.set_postfix_str(f"{label} episode {ep}")
            if isinstance(model, torch.nn.Module):
                try:
                    pred, seconds = timed(lambda: generate_trajectories(  # encoded and decoded by its codec
                        model, recorded[: settings.context], actions, settings, settings.seed * 100_000 + ep,
                        on_frame=bar.update, compile=compile, observed=observed),
                        model.device)
                except ValueError as err:
                    raise ValueError(f"model {label}, episode {ep}: {err}") from None
            else:  # a baseline: one deterministic "trajectory"
                pred, seconds = timed(lambda: baseline_predictions(model, clip, settings))
                bar.update(settings.horizon)
            scores = frame_scores(pred, target[None].expand_as(pred),  # {measure: (N, H)}
                                  context[-1][None].expand_as(pred[:, 0]), recorded_history=settings.teacher_forcing)
            record = {"format": VIDEO_FORMAT, "settings": settings.to_dict(), "data": data_info,
                      "checkpoint_sha256": ident["sha256"], "checkpoint": ident["path"], "episode": ep,
                      "episode_seed": store.meta.episodes[ep].seed, "rollout_seconds": seconds,
                      "metrics": {m: v.tolist() for m, v in scores.items()}, "i3d_real": None, "i3d_fake": None,
                      "i3d_windows_real": None, "i3d_windows_fake": None}
            if settings.fvd:
                full = torch.cat([context[None].expand(pred.shape[0], *context.shape), pred], dim=1)
                record["i3d_real"] = real_features
                record["i3d_fake"] = clip_features(full).tolist()
                record["i3d_windows_real"] = real_windows
                record["i3d_windows_fake"] = window_features(pred)
            shown = [h - 1 for h in sheet_horizons(settings.horizon)]
            sheet_frames = frames_to_uint8(pred[0, shown])  # (len(shown), h, w, 3)
            atomic_write(_sheet_path(out, label, ep), lambda f: np.savez_compressed(f, frames=sheet_frames))
            atomic_write_text(_video_path(out, label, ep), json.dumps(record))
            done[label, ep] = record
    bar.close()

    report = {
        "format": FORMAT,
        "protocol": "best of N per video and metric: the trajectory with the best horizon-mean; FVD: recorded "
                    "clips vs all N generated clips per video, context included",
        "settings": settings.to_dict(),
        "data": {**data_info, "source": store.meta.source, "frame_shape": list(store.frame_shape)},
        "episodes": episodes,
        "models": [],
    }
    for label, model, ident in models:
        result = summarize([done[label, ep] for ep in episodes])
        is_model = isinstance(model, torch.nn.Module)
        report["models"].append({
            "label": label, "checkpoint": ident, "arch": model.config.arch if is_model else "baseline",
            "params": sum(p.numel() for p in model.parameters()) if is_model else 0,
            "steps": (settings.steps or model.config.sample_steps) if is_model else None,
            "temperature": (model.config.sample_temperature if settings.temperature is None
                            else settings.temperature) if is_model else None,
            "shift": (model.config.sample_shift if settings.shift is None else settings.shift) if is_model else None,
            "rollout_seconds_per_frame": sum(done[label, ep]["rollout_seconds"] for ep in episodes)
            / (len(episodes) * settings.horizon),
            **result,
        })
    write_report(out, report)
    write_contact_sheet(out, report, store)
    return report


def write_contact_sheet(out: Path, report: dict, store) -> Path | None:
    """contact_sheet.png: for the first videos, the recorded frames and each row's first trajectory at the
    horizons of `sheet_horizons` (rows whose frames were not saved, e.g. by an older version, are left out)."""
    from .video import contact_sheet

    s = report["settings"]
    horizons = sheet_horizons(s["horizon"])
    blocks = []
    for ep in report["episodes"][:SHEET_VIDEOS]:
        frames, _ = store.episode(ep)
        first = s["start"] + s["context"]
        rows = {"real": np.asarray(frames[[first + h - 1 for h in horizons]])}
        for m in report["models"]:
            path = _sheet_path(out, m["label"], ep)
            if path.exists():
                with np.load(path) as saved:
                    rows[m["label"]] = saved["frames"]
        blocks.append((f"episode {ep}: {s['context']} context frames, then generated (first trajectory)", rows))
    if not blocks:
        return None
    image = contact_sheet(blocks, [f"+{h}" for h in horizons])
    from PIL import Image

    path = out / "contact_sheet.png"
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="png"))
    return path


# -- report files --------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sampler(settings: dict) -> str:
    """How the rollouts were sampled: "denoising steps: 4, temperature: each model's own, shift: 1", and whether
    from the recorded history."""
    own = "each model's own"
    parts = []
    for name, key in (("denoising steps", "steps"), ("temperature", "temperature"), ("shift", "shift")):
        value = settings.get(key)  # reports older than the temperature option have none
        parts.append(f"{name}: {own if value is None else format(value, 'g')}")
    if settings.get("teacher_forcing"):
        parts.append("teacher forcing: every frame from the recorded frames before it")
    return ", ".join(parts)


def markdown_table(report: dict) -> str:
    """metrics.md: the summary table and a best-of-N table at a few prediction horizons."""
    s = report["settings"]
    n = s["trajectories"]
    lines = [
        f"# Evaluation on {Path(report['data']['path']).name}: {len(report['episodes'])} videos, "
        f"context {s['context']} -> horizon {s['horizon']} frames, {n} trajectories, {_sampler(s)}",
        "",
        f"| model | arch | step | PSNR best-of-{n} | PSNR mean | SSIM best-of-{n} | SSIM mean | "
        f"LPIPS best-of-{n} | LPIPS mean | FVD | s/frame |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in report["models"]:
        sm = m["summary"]
        lines.append(
            f"| {m['label']} | {m['arch']} | {m['checkpoint'].get('step') or '-'} | {sm['psnr']['best']:.2f} | "
            f"{sm['psnr']['mean']:.2f} | {sm['ssim']['best']:.4f} | {sm['ssim']['mean']:.4f} | "
            f"{sm['lpips']['best']:.4f} | {sm['lpips']['mean']:.4f} | {_fmt(m['fvd'], 1)} | "
            f"{m['rollout_seconds_per_frame']:.3f} |"
        )
    lines += [
        "",
        f"PSNR/SSIM higher is better, LPIPS (AlexNet) and FVD lower. Best-of-{n}: per video and metric, the "
        f"trajectory with the best mean over the horizon; mean: all trajectories. FVD: {len(report['episodes'])} "
        f"recorded clips against {len(report['episodes']) * n} generated ones, {s['context'] + s['horizon']} frames "
        f"with the context (noisy with few videos). s/frame: rollout wall time per frame for all {n} trajectories.",
    ]
    horizon = s["horizon"]
    marks = sorted({h for h in (1, 2, 4, 8, 16, 32, 64, 128, 256, horizon) if h <= horizon})
    lines += ["", f"## Best-of-{n} by prediction horizon (frame after the context)", "",
              "| model | metric | " + " | ".join(str(h) for h in marks) + " |",
              "| --- | --- | " + " | ".join("---" for _ in marks) + " |"]
    for metric, digits in (("psnr", 2), ("ssim", 4), ("lpips", 4)):
        for m in report["models"]:
            curve = m["curves"][metric]["best"]
            lines.append(f"| {m['label']} | {metric.upper()} | "
                         + " | ".join(f"{curve[h - 1]:.{digits}f}" for h in marks) + " |")
    lines += ["", "## Drift by prediction horizon (mean over trajectories)", "",
              "| model | measure | " + " | ".join(str(h) for h in marks) + " |",
              "| --- | --- | " + " | ".join("---" for _ in marks) + " |"]
    for metric in DRIFT_METRICS:
        for m in report["models"]:
            curve = m["curves"][metric]["mean"]
            lines.append(f"| {m['label']} | {metric} | " + " | ".join(f"{curve[h - 1]:.3f}" for h in marks) + " |")
    windows = list(report["models"][0]["windows"])
    lines += ["", "## Window means over generated frames (mean over trajectories)", "",
              "| model | frames | PSNR | SSIM | LPIPS | colour-hist | sharpness | motion | FVD |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w in windows:
        for m in report["models"]:
            v = m["windows"][w]
            lines.append(f"| {m['label']} | {w} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['lpips']:.4f} | "
                         f"{v['color_hist']:.3f} | {v['sharpness']:.3f} | {v['motion']:+.4f} | "
                         f"{_fmt(v.get('fvd'), 1)} |")
    lines += ["", "Window FVD: the recorded frames of the window against the generated ones (no context), "
              "where the window has at least 9 frames."]
    lines += ["", "copy-last-frame and context-mean are the trivial baselines on the same clips (no actions used); "
              "a model that does not beat them has not learnt the world."]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict):
    """The figure of metrics.png: one panel per metric against the prediction horizon; solid best-of-N, dashed
    mean."""
    s = report["settings"]
    fig, axes = pyplot().subplots(2, 3, figsize=(15, 7.6), constrained_layout=True)
    axes = axes.flatten()
    x = np.arange(1, s["horizon"] + 1)
    baseline_style = {"copy-last-frame": ("black", "-"), "context-mean": ("0.55", ":")}
    for ax, metric in zip(axes, METRICS + DRIFT_METRICS):
        k = 0
        for m in report["models"]:
            if m["arch"] == "baseline":
                color, style = baseline_style.get(m["label"], ("0.3", "-."))
                ax.plot(x, m["curves"][metric]["mean"], color=color, linestyle=style, lw=1.5, label=m["label"])
                continue
            color, k = f"C{k}", k + 1
            if "best" in m["curves"][metric]:
                ax.plot(x, m["curves"][metric]["best"], color=color, label=f"{m['label']} best of {s['trajectories']}")
            ax.plot(x, m["curves"][metric]["mean"], color=color, linestyle="--", label=f"{m['label']} mean")
        ax.set_title(TITLES[metric])
        ax.set_xlabel("prediction horizon (frames after the context)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{len(report['episodes'])} videos, context {s['context']} frames, best of {s['trajectories']} "
                 f"trajectories (solid) and their mean (dashed), {_sampler(s)}; baselines in grey")
    return fig


def write_report(out: str | Path, report: dict) -> None:
    """metrics.json, metrics.md and metrics.png in `out`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    atomic_write_text(out / "metrics.md", markdown_table(report))
    save_figure(plot_curves(report), out / "metrics.png", dpi=110)
