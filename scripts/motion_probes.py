"""Why do long rollouts stop moving? Probes of a checkpoint's motion on recorded Crafter episodes (the numbers of
docs/experiments.md, "Why the long rollouts fade").

    python scripts/motion_probes.py crafter-scd --data data/crafter-val64 --probe rollout
    python scripts/motion_probes.py crafter-scd --probe one-step     # from recorded history, at each position
    python scripts/motion_probes.py crafter-scd --probe blur         # from a blurred recorded history
    python scripts/motion_probes.py crafter-scd --probe frozen       # from a history whose last frames stand still
    python scripts/motion_probes.py crafter-scd --probe roundtrip    # rollout, each latent decoded and encoded again
    python scripts/motion_probes.py crafter-scd --probe anchor --steps 4 --temperature 1 --shift 1   # whose errors?

The anchor probe (change prediction) splits the exposure bias over 64 frames: SSIM / LPIPS / sharpness against the
recorded frames when the history the encoder reads and the anchor x_{i-1} the change is added to are each the
recorded frames or the model's own.

Motion is scd.metrics.motion: a frame's mean |change| from the frame before it, on [0, 1] pixels. The ratios are
generated over recorded motion, on the frames whose recorded action is a move (move_left/right/up/down, actions 1-4
of Crafter), over the first --episodes episodes, at positions +1 .. +16 after 4 recorded context frames.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from scd.checkpoint import load_checkpoint
from scd.data.store import VideoStore, frames_to_model
from scd.evaluate import EvalSettings, generate_trajectories
from scd.metrics import motion, psnr, sharpness
from scd.metrics.scores import frame_scores
from scd.sampling import Streamer

CONTEXT, HORIZON, WINDOW = 4, 16, 15
MOVES = range(1, 5)


def episode(store: VideoStore, ep: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames, actions = store.episode(ep)
    return torch.from_numpy(np.array(frames[:length])), torch.from_numpy(np.array(actions[:length], dtype=np.int64))


def one_step(model, history: torch.Tensor, actions: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 history (c, H, W, 3) and actions (c + 1,) -> the next frame (1, 1, 3, H, W) in [-1, 1]; at most WINDOW
    frames of history are kept, as the rollout would."""
    first = max(0, len(history) - WINDOW)
    settings = EvalSettings(context=len(history) - first, horizon=1, trajectories=1, fvd=False, window=WINDOW)
    return generate_trajectories(model, history[first:], actions[first:], settings, seed)[:, :1].clamp(-1, 1)


def ratios_by_position(pairs: dict[int, list[tuple[float, float]]]) -> str:
    return " ".join(f"+{h}:{np.mean([g for _, g in v]) / np.mean([r for r, _ in v]):.2f}" for h, v in sorted(pairs.items()))


def rollout_probe(model, store, episodes: int) -> str:
    settings = EvalSettings(context=CONTEXT, horizon=HORIZON, trajectories=1, fvd=False, window=WINDOW)
    pairs = {}
    for ep in range(episodes):
        frames, actions = episode(store, ep, CONTEXT + HORIZON)
        pred = generate_trajectories(model, frames[:CONTEXT], actions, settings, ep).clamp(-1, 1)
        real = frames_to_model(frames)
        generated = motion(pred, real[CONTEXT - 1][None])[0]
        recorded = motion(real[None, CONTEXT:], real[CONTEXT - 1][None])[0]
        for h in range(HORIZON):
            if int(actions[CONTEXT + h]) in MOVES:
                pairs.setdefault(h + 1, []).append((float(recorded[h]), float(generated[h])))
    return "rollout, generated / recorded motion on move frames: " + ratios_by_position(pairs)


def one_step_probe(model, store, episodes: int) -> str:
    pairs = {}
    for ep in range(episodes):
        frames, actions = episode(store, ep, CONTEXT + HORIZON)
        real = frames_to_model(frames)
        for h in range(1, HORIZON + 1):
            c = CONTEXT + h - 1  # recorded frames before the predicted one
            if int(actions[c]) not in MOVES:
                continue
            pred = one_step(model, frames[:c], actions[: c + 1], ep * 100 + h)
            pairs.setdefault(h, []).append((float(motion(real[None, c : c + 1], real[c - 1][None])),
                                            float(motion(pred, real[c - 1][None]))))
    return "one step from recorded history, generated / recorded motion on move frames: " + ratios_by_position(pairs)


def gaussian_blur(x: torch.Tensor, sigma: float, size: int = 5) -> torch.Tensor:
    """(N, 3, H, W) -> the same, blurred by a size x size Gaussian (replicated borders)."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-r**2 / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, size, size)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, [size // 2] * 4, mode="replicate"), kernel, groups=3)


def blur_probe(model, store, episodes: int) -> str:
    lines = []
    for sigma in (0.0, 0.6, 1.0):
        closer, sharp = [], []
        for ep in range(episodes):
            frames, actions = episode(store, ep, CONTEXT + HORIZON)
            real = frames_to_model(frames)
            history = real if sigma == 0 else gaussian_blur(real, sigma)
            history_u8 = ((history.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            for h in range(1, HORIZON + 1):
                c = CONTEXT + h - 1
                if int(actions[c]) not in MOVES:
                    continue
                pred = one_step(model, history_u8[:c], actions[: c + 1], ep * 100 + h)
                # > 0: the prediction is closer to the next recorded frame than to the one it was made from
                closer.append(float(psnr(pred, real[None, c : c + 1]) - psnr(pred, real[None, c - 1 : c])))
                sharp.append(float(sharpness(history[None, c - 1 : c]) / sharpness(real[None, c - 1 : c])))
        lines.append(f"history blurred by sigma {sigma}: its sharpness {np.mean(sharp):.2f} of the recorded, the "
                     f"prediction is {np.mean(closer):+.2f} dB closer to the next recorded frame than to the last")
    return "\n".join(lines)


def frozen_probe(model, store, episodes: int) -> str:
    lines = []
    for frozen in (0, 1, 3, 6):
        pairs = []
        for ep in range(episodes):
            frames, actions = episode(store, ep, 24)
            for c in range(8, 23):  # predict frame c; the history's last `frozen` frames repeat the frame before them
                if int(actions[c]) not in MOVES:
                    continue
                history = frames[:c].clone()
                if frozen:
                    history[c - frozen :] = history[c - frozen - 1]
                pred = one_step(model, history, actions[: c + 1], ep * 100 + c)
                recorded = motion(frames_to_model(frames[c : c + 1])[None], frames_to_model(frames[c - 1 : c]))
                pairs.append((float(recorded), float(motion(pred, frames_to_model(history[-1:])))))
        r, g = np.array(pairs).T
        lines.append(f"last {frozen} history frames standing still: predicted / recorded one-step motion "
                     f"{g.mean() / r.mean():.2f} ({len(r)} move frames)")
    return "\n".join(lines)


def roundtrip_probe(model, store, episodes: int) -> str:
    plain = model.commit

    def commit_decoded(stream, frame, action):  # the generated latent through uint8 pixels and back
        plain(stream, model.codec.encode(model.codec.decode(frame.float())).to(frame.dtype), action)

    model.commit = commit_decoded
    try:
        return "each latent decoded and encoded again: " + rollout_probe(model, store, episodes)
    finally:
        model.commit = plain


ANCHOR_HORIZON = 64
ANCHOR_MODES = {  # (encoder history, anchor): whose frames
    "own history, own anchor (rollout)": (False, False),
    "recorded history, recorded anchor (teacher forcing)": (True, True),
    "recorded history, own anchor": (True, False),
    "own history, recorded anchor": (False, True),
}


def anchor_probe(model, store, episodes: int, sampler: dict) -> str:
    if not model.prediction.needs_anchor:
        raise SystemExit("the anchor probe needs a change-prediction model")
    marks = [h for h in (1, 2, 4, 8, 16, 32, 64) if h <= ANCHOR_HORIZON]
    lines = [f"{episodes} episodes, {CONTEXT} context frames, window {WINDOW}, sampler {sampler or 'the model own'}; "
             f"at +{'/'.join(map(str, marks))}:"]
    for mode, (recorded_history, recorded_anchor) in ANCHOR_MODES.items():
        scores = {"ssim": [], "lpips": [], "sharpness": []}
        for ep in range(episodes):
            frames, actions = episode(store, ep, CONTEXT + ANCHOR_HORIZON)
            latents = model.codec.encode(frames[None])  # (1, C + H, c, h, w)
            streamer = Streamer(model, latents[:, :CONTEXT], actions[None, :CONTEXT], window=WINDOW, seed=ep,
                                **sampler)
            own_anchor, out = None, []
            for i in range(ANCHOR_HORIZON):
                if own_anchor is not None:
                    streamer.stream.anchor = own_anchor
                frame = streamer.step(actions[None, CONTEXT + i],
                                      latents[:, CONTEXT + i] if recorded_history else None)[:, 0]
                out.append(frame)
                # the next frame's x_{i-1}: the commit set it to the committed frame; swap it if that is not it
                own_anchor = None if recorded_history == recorded_anchor else \
                    (latents[:, CONTEXT + i] if recorded_anchor else frame)
            pred = model.codec.decode_pixels(torch.stack(out, dim=1).float())  # (1, H, 3, h, w)
            real = frames_to_model(frames)
            scored = frame_scores(pred, real[None, CONTEXT:], real[CONTEXT - 1][None])  # {measure: (1, H)}
            for k in scores:
                scores[k].append(scored[k][0])
        curves = {k: torch.stack(v).mean(0) for k, v in scores.items()}
        lines.append(f"  {mode}: " + "; ".join(
            f"{k} " + "/".join(f"{curves[k][h - 1]:.3f}" for h in marks) for k in curves))
    return "\n".join(lines)


PROBES = {"rollout": rollout_probe, "one-step": one_step_probe, "blur": blur_probe, "frozen": frozen_probe,
          "roundtrip": roundtrip_probe, "anchor": anchor_probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint, run directory or shipped name (crafter-scd)")
    parser.add_argument("--data", default="data/crafter-val64", help="recorded Crafter episodes (>= 24 frames)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--probe", choices=list(PROBES), default="rollout")
    parser.add_argument("--steps", type=int, help="sampler of the anchor probe (default: the model's own)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--shift", type=float)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint)[0]
    store = VideoStore(args.data)
    if args.probe == "anchor":
        sampler = {k: getattr(args, k) for k in ("steps", "temperature", "shift") if getattr(args, k) is not None}
        print(anchor_probe(model, store, args.episodes, sampler))
    else:
        print(PROBES[args.probe](model, store, args.episodes))


if __name__ == "__main__":
    main()
