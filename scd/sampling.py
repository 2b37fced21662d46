"""Sampling (the paper's Algorithm 2): an Euler flow sampler and the frame-by-frame autoregressive rollout."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import is_temperature
from .flow import shift_time


def flow_schedule(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """(steps + 1,) flow times from 1 (noise) to 0 (data), warped by t' = k t / (1 + (k - 1) t)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def euler_sample(velocity: Callable, noise: torch.Tensor, schedule: torch.Tensor, callback: Callable | None = None):
    """Integrate dx/dt = v(x, t) from t = schedule[0] to schedule[-1] with Euler steps.

    velocity(x (B, ...), t (B,)) -> (B, ...). callback(dict(step, t, x, v)) sees every step (probing hooks)."""
    x = noise
    for step in range(len(schedule) - 1):
        t = schedule[step].expand(x.shape[0])
        v = velocity(x, t)
        if callback is not None:
            callback({"step": step, "t": schedule[step], "x": x, "v": v})
        x = x + (schedule[step + 1] - schedule[step]) * v
    return x


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: v = v_neg + scale (v - v_neg).

    The negative branch drops the action (null action, both models) and/or perturbs the context with noise
    of std `context_noise` (eta_cfg, SCD only: c_i + eta_cfg * zeta; scale 1.5 is the paper's best)."""

    scale: float = 1.5
    null_action: bool = False
    context_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (self.null_action or self.context_noise > 0):
            raise ValueError("guidance needs a negative branch: set null_action=True and/or context_noise > 0")
        if self.context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {self.context_noise}")


def _checked_frames(model, frames: torch.Tensor, name: str) -> torch.Tensor:
    """Given frames: uint8 game frames (B, F, H, W, 3), encoded by the model's codec, or frames in the model's space
    (B, F, C, H, W) as floats; shape, dtype and finiteness checked, cast to the model's dtype."""
    if isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.ndim == 5 and frames.shape[-1] == 3:
        frames = model.codec.encode(frames)
    model.check_frames(frames, name)
    if not frames.dtype.is_floating_point:
        raise ValueError(f"{name} must be uint8 frames (B, F, H, W, 3) or floats in the model's space, got "
                         f"{frames.dtype}")
    if not torch.isfinite(frames).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return frames.to(next(model.parameters()).dtype)


def _checked_context(model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Context frames (as for _checked_frames) with their actions (B, C0): both checked -> the frames."""
    frames = _checked_frames(model, frames, "context_frames")
    model.check_actions(actions, frames.shape[:2])
    _check_user_actions(model, actions)
    return frames


def _check_user_actions(model, actions: torch.Tensor) -> None:
    """Actions a caller gives: ids of the game's actions; the null action is for guidance only."""
    if actions.numel() and (actions == model.null_action).any():
        raise ValueError(f"action id {model.null_action} is the null action (guidance only): give ids "
                         f"0..{model.config.num_actions - 1}")


# The independent random streams of a rollout: a guided and an unguided run with one seed draw the same
# starting noise (paired runs), whatever guidance or history noise consumes.
FRAME_NOISE, GUIDANCE_NOISE, HISTORY_NOISE = range(3)


def _generator(seed: int | None, stream: int = FRAME_NOISE) -> torch.Generator:
    g = torch.Generator()  # CPU noise, so a seed gives the same video on every device
    if seed is None:
        g.seed()
    else:
        g.manual_seed((seed + stream * 0x9E3779B97F4A7C15) % 2**63)  # frame noise: manual_seed(seed) itself
    return g


def render_frame(model, stream, schedule: torch.Tensor, guidance: Guidance | None, noise: torch.Tensor,
                 action: torch.Tensor, guidance_noise: torch.Tensor | None = None, callback: Callable | None = None):
    """One frame of Algorithm 2 before its commit: the frame's context pass and its S denoising steps, with
    guidance both branches in every pass (the frame's own first). noise x_T (B, C, H, W), action (B,),
    guidance_noise zeta (B, P, D) for guidance's context noise -> the frame (B, C, H, W). What
    `Streamer(compile=True)` compiles: it reads the stream only through tensors and fixed settings."""
    null_branch = guidance is not None and guidance.null_action  # the negative branch drops the action
    ctx = model.frame_context(stream, action, noise, null_branch)
    if guidance is not None:  # actions (B, 2), contexts (B, 2, P, D) (a Causal DiT has none)
        actions = torch.stack([action, torch.full_like(action, model.null_action) if null_branch else action], dim=1)
        own, neg = (ctx, ctx) if ctx is None or not null_branch else ctx.unbind(1)
        if guidance.context_noise > 0:
            neg = model.corrupt_context(neg, guidance.context_noise, guidance_noise)
        ctx = None if own is None else torch.stack([own, neg], dim=1)

    def velocity(x, t):
        if guidance is None:
            return model.frame_velocity(stream, ctx, x, t, action)
        v = model.frame_velocity(stream, ctx, x[:, None].expand(-1, 2, *x.shape[1:]), t[:, None].expand(-1, 2),
                                 actions)
        return v[:, 1] + guidance.scale * (v[:, 0] - v[:, 1])  # v_neg + scale (v - v_neg)

    frame = model.prediction.to_frame(euler_sample(velocity, noise, schedule, callback), stream.anchor)
    if model.config.frame_range is not None:  # history never holds values no training frame had
        frame = frame.clamp(*model.config.frame_range)
    return frame


@functools.cache
def compiled_render_frame(device_type: str) -> Callable:
    """render_frame under torch.compile, one per device type (shared by every Streamer: the graphs are cached per
    model and stream layout); CUDA graphs on a GPU ("reduce-overhead")."""
    return torch.compile(render_frame, mode="reduce-overhead" if device_type == "cuda" else None, dynamic=False)


def _kv_dtype(model) -> torch.dtype:
    """The dtype the model's keys and values come out in: autocast's when it is on."""
    kind = model.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else next(model.parameters()).dtype


class Streamer:
    """Interactive autoregressive generation: `step(action)` renders the next frame (Algorithm 2, one frame).

    context_frames: (B, C0, C, H, W) given frames in the model's space, or uint8 game frames (B, C0, H, W, 3) that
    the model's codec encodes (C0 may be 0), with context_actions (B, C0). Frames come out in the model's space:
    `model.codec.decode(frame)` gives uint8 pixels. Each of the
    num_samples trajectories per video draws its own noise from one CPU generator seeded by `seed`, so a
    seed gives the same video on every device; guidance and history noise draw from streams of their own. `window`:
    how many past frames the next frame sees (older ones leave the KV cache; a model trained on clips of F frames
    saw at most F - 1). History frames (the context and every finished frame) are corrupted to a fixed flow time
    before the model reads them, as in training: `history_noise`, by default the model's `config.history_noise`.
    steps, shift: the Euler sampler's, by default the model's `config.sample_steps` and `config.sample_shift`.
    temperature: the standard deviation of each frame's starting noise, by default the model's
    `config.sample_temperature` (1: the noise it was trained on; lower: less of it reaches the frame, less
    diversity). callback(dict(frame, guided, step, t, x, v)) sees every denoising step (for probing; with
    guidance, v is the guided velocity and each pass ran both branches). compile: each frame's context pass and
    denoising steps run as one torch.compile graph (`render_frame`; CUDA graphs on a GPU), the commit eagerly; the
    first frames compile (seconds to minutes), the later ones replay."""

    def __init__(
        self,
        model,
        context_frames: torch.Tensor,
        context_actions: torch.Tensor,
        steps: int | None = None,
        shift: float | None = None,
        guidance: Guidance | None = None,
        num_samples: int = 1,
        seed: int | None = 0,
        window: int = 256,
        callback: Callable | None = None,
        history_noise: float | None = None,
        compile: bool = False,
        temperature: float | None = None,
    ):
        context_frames = _checked_context(model, context_frames, context_actions)
        b, c0 = context_frames.shape[:2]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        n = b * num_samples
        null_branch = guidance is not None and guidance.null_action  # guidance's negative branch drops a_i
        self.stream = model.new_stream(n, window, branches=2 if null_branch else 1)
        if c0 == 0 and model.prediction.needs_anchor:
            raise ValueError("change prediction needs at least one context frame (it renders the change from the "
                             "last one)")
        if c0 > window:
            raise ValueError(f"context of {c0} frames exceeds the history window of {window} frames")
        if compile and callback is not None:
            raise ValueError("a callback sees every denoising step from Python: use it without compile")
        self.model, self.guidance, self.callback = model, guidance, callback
        self.render = compiled_render_frame(model.device.type) if compile else render_frame
        self.batch, self.num_samples = b, num_samples
        self.device = model.device
        steps = model.config.sample_steps if steps is None else steps
        shift = model.config.sample_shift if shift is None else shift
        self.schedule = flow_schedule(steps, shift, device=self.device)
        self.temperature = model.config.sample_temperature if temperature is None else temperature
        if not is_temperature(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        self.generator = _generator(seed)
        self.guidance_generator = _generator(seed, GUIDANCE_NOISE)
        self.stream.history_generator = _generator(seed, HISTORY_NOISE)
        if history_noise is not None:
            if not 0 <= history_noise < 1:
                raise ValueError(f"history_noise must be a flow time in [0, 1), got {history_noise}")
            self.stream.history_t = float(history_noise)
        self.frames_generated = 0
        self.window, self.compile = window, compile
        if compile:  # the compiled step finds the cache's buffers in place, in the dtype autocast gives now
            cfg = model.config
            self.stream.cache.allocate(n, cfg.heads, cfg.head_dim, _kv_dtype(model), self.device, static=True)
        if c0 > 0:
            self._prefill(self.stream, context_frames, context_actions)

    @torch.no_grad()
    def _prefill(self, stream, frames: torch.Tensor, actions: torch.Tensor) -> None:
        """Known frames (B, n, C, H, W) in the model's space and their actions (B, n) into `stream`, each video's
        once per sample."""
        self.model.prefill(stream, frames.to(self.device).repeat_interleave(self.num_samples, dim=0),
                           actions.to(self.device).repeat_interleave(self.num_samples, dim=0))

    def _stream_changed(self) -> None:
        if self.compile:  # new buffers: the compiled step reads them in place too
            for buffer in (self.stream.cache.k, self.stream.cache.v):
                torch._dynamo.mark_static_address(buffer)

    def join(self, context_frames: torch.Tensor, context_actions: torch.Tensor) -> range:
        """Start more videos in this batch, between two frames: each from its own context (B', C0 >= 1 frames, as
        for the constructor), read into the KV cache at the C0 positions just before the batch's next frame, so
        that from the next `step` on they render in the same passes as the videos already here, exactly as they
        would alone (RoPE is relative; the cache hides every slot from before a row's first frame). Their noise
        comes from this streamer's generator. Returns their indices in the batch (the last B')."""
        frames = _checked_context(self.model, context_frames, context_actions)
        b, c0 = frames.shape[:2]
        if not 1 <= c0 <= self.window:
            raise ValueError(f"a joining video needs 1 to {self.window} (the window) context frames, got {c0}")
        cache = self.stream.cache
        joining = self.model.new_stream(b * self.num_samples, self.window, cache.spare + 1, cache.position - c0)
        joining.history_t, joining.history_generator = self.stream.history_t, self.stream.history_generator
        self._prefill(joining, frames, context_actions)
        self.stream = self.stream.concat(joining)
        self._stream_changed()
        self.batch += b
        return range(self.batch - b, self.batch)

    def leave(self, videos) -> None:
        """Stop the videos with these batch indices (between two frames); the others keep their order and go on."""
        leaving = set(videos)
        if not leaving or min(leaving) < 0 or max(leaving) >= self.batch:
            raise ValueError(f"videos to leave must be indices in 0..{self.batch - 1}, got {sorted(leaving)}")
        kept = [i for i in range(self.batch) if i not in leaving]
        if not kept:
            raise ValueError("every video would leave the batch: drop the Streamer instead")
        rows = torch.tensor(kept)[:, None] * self.num_samples + torch.arange(self.num_samples)  # (kept, samples)
        self.stream = self.stream.select(rows.flatten())
        self._stream_changed()
        self.batch = len(kept)

    @torch.no_grad()
    def step(self, action: torch.Tensor | int, observed: torch.Tensor | None = None) -> torch.Tensor:
        """Render the next frame given its action (B,) (or one int for all) -> (B, num_samples, C, H, W).

        observed: the frame that really came next, (B, C, H, W) in the model's space or uint8 (B, H, W, 3): it
        enters the history instead of the rendered one (teacher forcing; a world model corrected by real
        observations), so the next frame is rendered from it as from a context frame (without a window, exactly so)."""
        model, stream, guidance = self.model, self.stream, self.guidance
        if isinstance(action, int):
            action = torch.full((self.batch,), action, dtype=torch.long)
        model.check_actions(action, (self.batch,))
        _check_user_actions(model, action)
        if observed is not None:
            observed = _checked_frames(model, observed[:, None], "observed")[:, 0]
            if observed.shape[0] != self.batch:
                raise ValueError(f"observed must hold one frame per video ({self.batch}), got {observed.shape[0]}")
            observed = observed.to(self.device).repeat_interleave(self.num_samples, dim=0)
        a = action.to(self.device).repeat_interleave(self.num_samples, dim=0)
        cfg = model.config
        noise = self.temperature * torch.randn((stream.batch, *cfg.frame_shape), generator=self.generator)
        noise = noise.to(self.device)
        zeta = None
        if guidance is not None and guidance.context_noise > 0:
            zeta = torch.randn((stream.batch, cfg.tokens_per_frame, cfg.hidden), generator=self.guidance_generator)
            zeta = zeta.to(self.device)
        step_callback = None
        if self.callback is not None:
            index = self.frames_generated
            guided = guidance is not None
            step_callback = lambda info: self.callback({"frame": index, "guided": guided, **info})  # noqa: E731
        frame = self.render(model, stream, self.schedule, guidance, noise, a, zeta, step_callback)
        if self.render is not render_frame:
            frame = frame.clone()  # a CUDA graph's output lives in memory its next replay overwrites
        model.commit(stream, frame if observed is None else observed, a)
        self.frames_generated += 1
        return frame.view(self.batch, self.num_samples, *frame.shape[1:])


def rollout(model, context_frames: torch.Tensor, actions: torch.Tensor, observed: torch.Tensor | None = None,
            **kwargs) -> Iterator[torch.Tensor]:
    """Generate frames one at a time; yields each new frame as (B, num_samples, C, H, W).

    actions: (B, C0 + H) for the C0 context frames and the H frames to generate (actions[:, i] produced
    frame i). observed: the recorded frames after the context, (B, H, ...) as the context's: each generated
    frame is then rendered from the recorded frames before it (teacher forcing: every frame one step ahead of
    real history) instead of from the model's own. Other keyword arguments as for `Streamer` (steps, shift,
    guidance, num_samples, seed, window, callback, history_noise); the window defaults to the whole rollout."""
    context_frames = _checked_frames(model, context_frames, "context_frames")
    b, c0 = context_frames.shape[:2]
    if actions.ndim != 2 or actions.shape[0] != b or actions.shape[1] <= c0:
        raise ValueError(
            f"actions must have shape (B={b}, context {c0} + frames to generate), got {tuple(actions.shape)}"
        )
    horizon = actions.shape[1] - c0
    if observed is not None:
        observed = _checked_frames(model, observed, "observed")
        if tuple(observed.shape[:2]) != (b, horizon):
            raise ValueError(f"observed must hold the {horizon} recorded frames after the context of each of the "
                             f"{b} videos, shape (B={b}, {horizon}, ...), got {tuple(observed.shape)}")
    model.check_actions(actions, actions.shape)
    _check_user_actions(model, actions)
    if kwargs.get("window") is None:
        kwargs["window"] = actions.shape[1]
    streamer = Streamer(model, context_frames, actions[:, :c0], **kwargs)
    for i in range(horizon):
        yield streamer.step(actions[:, c0 + i], None if observed is None else observed[:, i])


def generate(model, context_frames, actions, **kwargs) -> torch.Tensor:
    """The whole rollout at once: (B, num_samples, H, C, H, W)."""
    return torch.stack(list(rollout(model, context_frames, actions, **kwargs)), dim=2)
