"""The play engine: streams frames from a world model, one `Streamer.step` per frame, in a worker thread.

The engine owns the models, the real context frames it starts from, the current `Streamer`, and the session
recording. Other threads talk to it only through thread-safe methods:

    engine.set_action(id)          the key the player holds (or noop); every press is also queued once, so a
                                   tap shorter than one frame still reaches the model
    engine.request(kind, value)    "model" / "reset" / "pause", applied by the worker between two frames
    engine.set_watched(bool)       generate only while someone is watching
    engine.save_video(dir)         the session so far as an mp4

and it reports back through one callback, `on_event(event)`, called from the worker thread with a `Frame`
or a status/error dict. `render_next()` renders one frame in the calling thread (the benchmark uses it
without the worker). `load_models` picks the models to play: checkpoints (by default the shipped ones) or
random-weight presets.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config import SHIPPED_CHECKPOINTS as DEFAULT_CHECKPOINTS, get_preset, is_temperature
from ..data.context import ContextSet
from ..models import build_model
from ..sampling import Streamer
from ..timing import timed

MODEL_LABELS = {"scd": "SCD", "dit": "Causal DiT"}
ARCHS = {"scd": "scd", "dit": "causal_dit"}  # the architecture each name plays
UNTRAINED_PRESETS = {"scd": "scd-xs", "dit": "dit-xs"}
RECORD_LIMIT = 9000  # frames kept for the session video (~10 min at 15 fps, 110 MB at 64x64)
ACTION_QUEUE = 8  # presses waiting for a frame; older ones are dropped when the player mashes keys
COMMAND_QUEUE = 8  # model switches / resets / pauses waiting for the worker
FPS_WINDOW = 20  # frames over which the generation rate is averaged
VIDEO_FPS = 15  # playback rate of saved sessions
VIDEO_SCALE = 4  # nearest-neighbour upscaling of saved sessions


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bf16 autocast should speed generation up: on a GPU, or a CPU with native bf16 instructions
    (measured on a 2-core AVX512-BF16 CPU: ~15% faster than float32 for scd-xs; elsewhere bf16 is emulated)."""
    if torch.device(device).type != "cpu":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_models(checkpoints: dict, context: ContextSet, untrained: bool = False,
                device: str | torch.device = "cpu") -> tuple[dict, list[str] | None]:
    """The models to play: name ("scd", "dit") -> model, from `checkpoints` (name -> checkpoint; none given: the
    shipped ones) or, `untrained`, random-weight presets of the context's frame shape; and the action names the
    checkpoints' data description gives (None if it gives none)."""
    if untrained:
        if checkpoints:
            raise ValueError("--untrained builds random-weight scd-xs and dit-xs; do not combine it with --scd/--dit")
        names = context.action_names
        num_actions = len(names) if names else int(context.actions.max()) + 1
        h, w, c = context.frames.shape[2:]
        torch.manual_seed(0)
        return {name: build_model(get_preset(preset).replace(frame_shape=(c, h, w), num_actions=num_actions))
                .to(device).eval() for name, preset in UNTRAINED_PRESETS.items()}, None
    if not checkpoints:
        missing = [str(p) for p in DEFAULT_CHECKPOINTS.values() if not (p / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"the shipped checkpoints are missing ({', '.join(missing)}; not part of this "
                                    "install yet): pass --scd CKPT and/or --dit CKPT, or --untrained to try the speed")
        checkpoints = dict(DEFAULT_CHECKPOINTS)
    models, action_names = {}, None
    for name, path in checkpoints.items():
        model, info = load_checkpoint(path, device=device)
        if model.config.arch != ARCHS[name]:
            raise ValueError(f"--{name} {path} is a {model.config.arch} checkpoint, expected {ARCHS[name]}")
        models[name] = model
        action_names = action_names or info.get("data", {}).get("action_names")
    return models, action_names


# -- the engine ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One generated frame and how it was made."""

    index: int  # frames generated in this session (context frames not counted)
    model: str
    episode: int
    action: int
    pixels: np.ndarray  # uint8 (H, W, 3)
    latency: float  # seconds spent in Streamer.step (and decoding to uint8 pixels)
    fps: float  # generation rate over the last FPS_WINDOW frames (0 until there are two)


class Engine:
    """Streams frames from one of several world models (named "scd" / "dit"), switching on request.

    models: name -> WorldModel (same frame shape and action set). context: real opening frames; each session
    starts from the last `context_frames` frames of one episode. action_names: the game's (e.g. from the
    checkpoints' data description; default: the context's, else action_<id>). steps: denoising steps S per frame
    (default: each model's own `config.sample_steps`); temperature: the starting noise's std (default: each
    model's own `config.sample_temperature`);
    window: past frames the next frame sees; seed: the noise seed of every session; bf16: autocast on the CPU;
    compile: the compiled per-frame step (the first frames of each model wait for the compiler)."""

    def __init__(self, models: dict, context: ContextSet, *, action_names=None, steps: int | None = None,
                 context_frames: int = 4, window: int = 7, seed: int = 0, bf16: bool = False,
                 compile: bool = False, on_event: Callable | None = None, temperature: float | None = None):
        if not models:
            raise ValueError("no model to play: give at least one checkpoint")
        unknown = set(models) - set(MODEL_LABELS)
        if unknown:
            raise ValueError(f"unknown model names {sorted(unknown)}; use {sorted(MODEL_LABELS)}")
        first = next(iter(models.values())).config
        pixels = next(iter(models.values())).codec.pixel_shape  # game frames (H, W, 3), whatever each model's space
        for name, model in models.items():
            if model.codec.pixel_shape != pixels or model.config.num_actions != first.num_actions:
                raise ValueError(f"the models do not play the same game: {name} has frames {model.codec.pixel_shape} "
                                 f"and {model.config.num_actions} actions, another has {pixels} and "
                                 f"{first.num_actions}")
        if context.frames.shape[2:] != pixels:
            raise ValueError(f"{context.source}: context frames are {context.frames.shape[2:]}, the models make "
                             f"{pixels} frames")
        if context.actions.max() >= first.num_actions:
            raise ValueError(f"{context.source}: context actions go up to {context.actions.max()}, the models know "
                             f"{first.num_actions} actions")
        if not 1 <= context_frames <= context.length:
            raise ValueError(f"--context {context_frames}: {context.source} holds 1..{context.length} frames per episode")
        if context_frames > window:
            raise ValueError(f"--context {context_frames} exceeds the history --window {window}")
        if steps is not None and steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        if temperature is not None and not is_temperature(temperature):
            raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")
        self.models, self.context = models, context
        self.steps, self.context_frames, self.window, self.seed, self.bf16 = steps, context_frames, window, seed, bf16
        self.compile, self.temperature = compile, temperature
        self.on_event = on_event or (lambda event: None)
        if bf16:  # torch notes once that RMSNorm's float32 weight meets bf16 input; expected under autocast
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        self.action_names = self._action_names(action_names, first.num_actions)
        self.num_actions = first.num_actions

        # Shared with other threads (guarded by _lock): the held action, queued presses, the recording.
        self._lock = threading.Lock()
        self._held = 0
        self._presses: deque[int] = deque(maxlen=ACTION_QUEUE)
        self._recording: deque[tuple[np.ndarray, int]] = deque(maxlen=RECORD_LIMIT)
        self.action_log: deque[int] = deque(maxlen=10_000)  # action ids fed to Streamer.step, newest last
        self._commands: queue.Queue = queue.Queue(maxsize=COMMAND_QUEUE)
        self._wake = threading.Event()
        self._watched = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        # Owned by the thread that generates (the worker, or the caller of render_next).
        self.model_name = "scd" if "scd" in models else next(iter(models))
        self.episode = 0
        self.paused = False
        self.frames_generated = 0
        self._done_times: deque[float] = deque(maxlen=FPS_WINDOW)
        self.streamer: Streamer | None = None

    def steps_for(self, name: str) -> int:
        """The denoising steps model `name` renders with: --steps, else the model's own `config.sample_steps`."""
        return self.models[name].config.sample_steps if self.steps is None else self.steps

    def _action_names(self, names, num_actions: int) -> tuple[str, ...]:
        """The given names, else the context source's, else action_<id> (names of another game are passed over)."""
        if names and len(names) == num_actions:
            return tuple(names)
        if self.context.action_names and len(self.context.action_names) == num_actions:
            return self.context.action_names
        return tuple(f"action_{i}" for i in range(num_actions))

    # -- thread-safe controls ------------------------------------------------------------------------------
    def set_action(self, action: int) -> None:
        """The action the player holds now (0 = noop when nothing is held). A non-noop action is also queued
        once, so a key tapped between two frames still drives one frame."""
        if not 0 <= action < self.num_actions:
            raise ValueError(f"unknown action id {action}: the models know {self.num_actions} actions")
        with self._lock:
            self._held = action
            if action != 0:
                self._presses.append(action)

    def _release_keys(self) -> None:
        with self._lock:
            self._held = 0
            self._presses.clear()

    def request(self, kind: str, value=None) -> None:
        """Queue a command for the worker: ("model", name), ("reset", episode or None), ("pause", bool).
        Raises queue.Full when COMMAND_QUEUE commands are already waiting."""
        if kind not in ("model", "reset", "pause"):
            raise ValueError(f"unknown command {kind!r}")
        if kind == "model" and value not in self.models:
            raise ValueError(f"model {value!r} is not loaded; loaded: {sorted(self.models)}")
        if kind == "reset" and value is not None and not 0 <= value < self.context.num_episodes:
            raise ValueError(f"episode {value} out of range: the context holds {self.context.num_episodes} episodes")
        self._commands.put_nowait((kind, value))
        self._wake.set()

    def set_watched(self, watched: bool) -> None:
        """Generate only while a page is connected (no CPU burnt for nobody); with none, no key is held."""
        if watched:
            self._watched.set()
        else:
            self._watched.clear()
            self._release_keys()
        self._wake.set()

    def status(self) -> dict:
        return {"type": "status", "model": self.model_name, "episode": self.episode, "paused": self.paused,
                "episodes": self.context.num_episodes, "frames": self.frames_generated}

    def save_video(self, out_dir: str | Path) -> tuple[Path, int]:
        """Write the session so far (context frames first) as an mp4 in out_dir -> (path, number of frames)."""
        from ..video import upscale, write_video

        with self._lock:
            frames = [f for f, _ in self._recording]
            model = self.model_name
        if not frames:
            raise ValueError("nothing to save yet: no frame has been generated")
        name = time.strftime("scd-play-%Y%m%d-%H%M%S") + f"-{model}-{time.monotonic_ns() % 10**6:06d}.mp4"
        path = write_video(Path(out_dir) / name, upscale(np.stack(frames), VIDEO_SCALE), fps=VIDEO_FPS)
        return path, len(frames)

    # -- generation (worker thread or benchmark) -----------------------------------------------------------
    def _autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(next(iter(self.models.values())).device.type, dtype=torch.bfloat16)

    def reset(self, episode: int | None = None, model: str | None = None, continue_session: bool = False) -> None:
        """Start a new Streamer for `model` (default: the current one).

        From the context of `episode` (default: the current one), or with continue_session from the last
        context_frames frames of the session, so a model switch keeps the world the player is in."""
        self.model_name = model or self.model_name
        with self._lock:
            recorded = list(self._recording)[-self.context_frames:]
        if continue_session and len(recorded) >= self.context_frames:
            frames = np.stack([f for f, _ in recorded])
            actions = np.array([a for _, a in recorded], dtype=np.int64)
        else:
            self.episode = self.episode if episode is None else episode
            frames = self.context.frames[self.episode, -self.context_frames:]
            actions = self.context.actions[self.episode, -self.context_frames:].astype(np.int64)
            with self._lock:
                self._recording.clear()
                self._recording.extend(zip(frames, actions.tolist()))
                self._presses.clear()
            self.frames_generated = 0
        model = self.models[self.model_name]
        frames, actions = torch.from_numpy(np.array(frames)), torch.from_numpy(actions)  # uint8: the codec encodes
        with torch.inference_mode(), self._autocast():
            self.streamer = Streamer(model, frames[None].to(model.device), actions[None].to(model.device),
                                     steps=self.steps_for(self.model_name), seed=self.seed, window=self.window,
                                     compile=self.compile, temperature=self.temperature)
        self._done_times.clear()

    def _next_action(self) -> int:
        with self._lock:
            return self._presses.popleft() if self._presses else self._held

    def render_next(self) -> Frame:
        """Generate the next frame with the queued press or the held action, record it and return it."""
        if self.streamer is None:
            self.reset()
        action = self._next_action()
        with torch.inference_mode(), self._autocast():
            codec = self.streamer.model.codec
            pixels, latency = timed(lambda: codec.decode(self.streamer.step(action)[0, 0][None])[0].cpu().numpy())
        self._done_times.append(time.perf_counter())
        times = self._done_times
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        with self._lock:
            self._recording.append((pixels, action))
        self.action_log.append(action)
        self.frames_generated += 1
        return Frame(self.frames_generated, self.model_name, self.episode, action, pixels, latency, fps)

    def _apply(self, kind: str, value) -> None:
        if kind == "model":
            if value != self.model_name:
                self.reset(model=value, continue_session=True)
        elif kind == "reset":
            self.reset(episode=value)
        else:
            self.paused = bool(value)
            self._release_keys()  # presses made while paused do not burst out on resume
            self._done_times.clear()
        self.on_event(self.status())

    def _run(self) -> None:
        try:
            self.reset()
            self.on_event(self.status())
            while not self._stop.is_set():
                try:
                    while True:
                        self._apply(*self._commands.get_nowait())
                except queue.Empty:
                    pass
                if self.paused or not self._watched.is_set():
                    self._wake.wait(0.1)
                    self._wake.clear()
                    self._done_times.clear()  # the rate restarts after an idle spell
                    continue
                self.on_event(self.render_next())
        except Exception as err:  # report, keep the server up; the page shows the message
            self.on_event({"type": "error", "message": f"generation stopped: {type(err).__name__}: {err}"})
            raise

    # -- lifetime ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="scd-play-worker", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current frame and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the generation thread did not stop within {timeout} s")


def benchmark(engine: Engine, frames: int, chunk: int = 25, warmup: int = 5) -> dict[str, dict]:
    """Render `frames` frames with each model of the engine, headless, in chunks that alternate between the
    models (so a change in background load hits both alike). Returns name -> {fps, latency stats in ms}."""
    if frames < 1:
        raise ValueError(f"--benchmark needs at least 1 frame, got {frames}")
    names = list(engine.models)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    walls = dict.fromkeys(names, 0.0)
    actions = [i % engine.num_actions for i in range(frames)]
    for name in names:  # warm-up: first calls allocate the caches and pick kernels
        engine.reset(episode=0, model=name)
        for _ in range(warmup):
            engine.render_next()
    done = 0
    while done < frames:
        n = min(chunk, frames - done)
        for name in names:
            engine.reset(episode=0, model=name)

            def chunk_of_frames():
                for i in range(n):
                    engine.set_action(actions[done + i])
                    latencies[name].append(engine.render_next().latency)

            walls[name] += timed(chunk_of_frames)[1]
        done += n
    results = {}
    for name in names:
        ms = np.array(latencies[name]) * 1000
        results[name] = {"frames": frames, "fps": frames / walls[name], "mean_ms": float(ms.mean()),
                         "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                         "max_ms": float(ms.max())}
    return results
