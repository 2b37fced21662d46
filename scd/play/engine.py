"""The play engine: streams frames from world models for any number of sessions (players' worlds), in a worker thread.

The engine owns the models, the real context frames sessions start from, the sessions (each with its key state
and recording) and one batch per model: the active sessions that play a model render together, one batched
`Streamer.step` per frame. Other threads talk to it only through thread-safe methods:

    engine.open_session(episode)   a new world, from the context of `episode` -> session id; close_session(id)
    engine.set_action(id, action)  the key the player holds (or noop); every press is also queued once, so a
                                   tap shorter than one frame still reaches the model
    engine.request(id, kind, value)  "model" / "reset" / "pause", applied by the worker between two frames
    engine.set_watched(id, bool)   generate for a session only while someone is watching it
    engine.save_video(id, dir)     the session so far as an mp4

and it reports back through one callback, `on_event(event)`, called from the worker thread with a `Frame` (which
names its session) or a status/error dict. `render_next()` renders one frame of every active session in the
calling thread (the benchmark uses it without the worker). `load_models` picks the models to play: checkpoints
(by default the shipped ones) or random-weight presets.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, rollout_window
from ..config import SHIPPED_CHECKPOINTS as DEFAULT_CHECKPOINTS, get_preset, is_shift, is_temperature
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
# A batch lives while any of its sessions plays, and its frame positions grow with it: float32 RoPE angles lose
# about 1e-7 of their size, 0.004 rad at 2^16 frames. Past that its sessions rejoin a fresh batch from their recent
# frames (a re-read of 7 frames each, every 18 minutes at 60 frames/s).
REBASE_FRAMES = 2**16
DEFAULT_WINDOW = 7  # history window of a model that does not say what it trained on (8-frame clips)
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
                device: str | torch.device = "cpu") -> tuple[dict, list[str] | None, dict]:
    """The models to play: name ("scd", "dit") -> model, from `checkpoints` (name -> checkpoint; none given: the
    shipped ones) or, `untrained`, random-weight presets of the context's frame shape; the action names the
    checkpoints' data description gives (None if it gives none); and each model's history window (name ->
    rollout_window: its sample_window, else the one it trained with; DEFAULT_WINDOW where the checkpoint does not
    say)."""
    if untrained:
        if checkpoints:
            raise ValueError("--untrained builds random-weight scd-xs and dit-xs; do not combine it with --scd/--dit")
        names = context.action_names
        num_actions = len(names) if names else int(context.actions.max()) + 1
        h, w, c = context.frames.shape[2:]
        torch.manual_seed(0)
        return {name: build_model(get_preset(preset).replace(frame_shape=(c, h, w), num_actions=num_actions))
                .to(device).eval() for name, preset in UNTRAINED_PRESETS.items()}, None, \
            dict.fromkeys(UNTRAINED_PRESETS, DEFAULT_WINDOW)
    if not checkpoints:
        missing = [str(p) for p in DEFAULT_CHECKPOINTS.values() if not (p / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"the shipped checkpoints are missing ({', '.join(missing)}; not part of this "
                                    "install yet): pass --scd CKPT and/or --dit CKPT, or --untrained to try the speed")
        checkpoints = dict(DEFAULT_CHECKPOINTS)
    models, action_names, windows = {}, None, {}
    for name, path in checkpoints.items():
        model, info = load_checkpoint(path, device=device)
        if model.config.arch != ARCHS[name]:
            raise ValueError(f"--{name} {path} is a {model.config.arch} checkpoint, expected {ARCHS[name]}")
        models[name] = model
        windows[name] = rollout_window(model.config, info) or DEFAULT_WINDOW
        action_names = action_names or info.get("data", {}).get("action_names")
    return models, action_names, windows


# -- the engine ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One generated frame and how it was made."""

    session: int
    index: int  # frames generated in this session (context frames not counted)
    model: str
    episode: int
    action: int
    pixels: np.ndarray  # uint8 (H, W, 3)
    latency: float  # seconds spent in the batched Streamer.step (and decoding to uint8 pixels)
    fps: float  # the session's generation rate over its last FPS_WINDOW frames (0 until there are two)


@dataclass(eq=False)
class Session:
    """One player's world: the model it plays, its key state, its recording (context frames first). It renders
    while watched and not paused, as one row of its model's batch."""

    id: int
    model: str
    episode: int = 0
    paused: bool = False
    watched: bool = False
    frames_generated: int = 0
    rejoin: bool = True  # (re)start its row from its recording: new, reset
    held: int = 0  # guarded by the engine's lock, like presses and recording
    presses: deque = field(default_factory=lambda: deque(maxlen=ACTION_QUEUE))
    recording: deque = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))  # (pixels, action)
    action_log: deque = field(default_factory=lambda: deque(maxlen=10_000))  # actions fed to the model, newest last
    done_times: deque = field(default_factory=lambda: deque(maxlen=FPS_WINDOW))

    @property
    def active(self) -> bool:
        return self.watched and not self.paused


@dataclass(eq=False)
class Batch:
    """The active sessions of one model: one Streamer, one row per session, in this order."""

    streamer: Streamer
    sessions: list[int]


class Engine:
    """Streams frames from world models (named "scd" / "dit") for any number of sessions: every session plays
    its own world, and the sessions that play one model render together, one batched `Streamer.step` per frame
    (a session that starts, resets, resumes or switches model joins its model's batch from its recent frames;
    one that pauses or closes leaves it).

    models: name -> WorldModel (same frame shape and action set). context: real opening frames; each session
    starts from the last `context_frames` frames of one episode. action_names: the game's (e.g. from the
    checkpoints' data description; default: the context's, else action_<id>). steps: denoising steps S per frame
    (default: each model's own `config.sample_steps`); temperature: the starting noise's std, shift: the
    schedule's shift (default: each model's own `config.sample_temperature`, `config.sample_shift`);
    window: past frames the next frame sees, for every model or by name (a dict); seed: the noise seed of each
    model's batch; bf16: autocast on the CPU;
    compile: the compiled per-frame step (the first frames of each batch size wait for the compiler)."""

    def __init__(self, models: dict, context: ContextSet, *, action_names=None, steps: int | None = None,
                 context_frames: int = 4, window: int | dict = DEFAULT_WINDOW, seed: int = 0, bf16: bool = False,
                 compile: bool = False, on_event: Callable | None = None, temperature: float | None = None,
                 shift: float | None = None):
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
        windows = window if isinstance(window, dict) else dict.fromkeys(models, window)
        for name in models:
            if name not in windows or not isinstance(windows[name], int) or windows[name] < 1:
                raise ValueError(f"no history window for {name}: give an integer >= 1, got {windows.get(name)!r}")
            if context_frames > windows[name]:
                raise ValueError(f"--context {context_frames} exceeds the history --window {windows[name]} of {name}")
        if steps is not None and steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        if temperature is not None and not is_temperature(temperature):
            raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")
        if shift is not None and not is_shift(shift):
            raise ValueError(f"--shift must be a finite number > 0, got {shift}")
        self.models, self.context = models, context
        self.steps, self.context_frames, self.windows, self.seed, self.bf16 = steps, context_frames, windows, seed, bf16
        self.compile, self.temperature, self.shift = compile, temperature, shift
        self.on_event = on_event or (lambda event: None)
        if bf16:  # torch notes once that RMSNorm's float32 weight meets bf16 input; expected under autocast
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        self.action_names = self._action_names(action_names, first.num_actions)
        self.num_actions = first.num_actions
        self.default_model = "scd" if "scd" in models else next(iter(models))

        # Shared with other threads (guarded by _lock): the sessions, their keys and recordings.
        self._lock = threading.Lock()
        self.sessions: dict[int, Session] = {}
        self._next_id = 0
        self._commands: queue.Queue = queue.Queue(maxsize=COMMAND_QUEUE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        # Owned by the thread that generates (the worker, or the caller of render_next).
        self.batches: dict[str, Batch] = {}  # model name -> its active sessions' batch

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
    def open_session(self, episode: int = 0, watched: bool = True) -> int:
        """A new session on the default model, starting from the context of `episode` -> its id."""
        with self._lock:
            session = Session(self._next_id, self.default_model)
            self._next_id += 1
            self.sessions[session.id] = session
        self._restart(session, episode)
        session.watched = watched
        self._wake.set()
        return session.id

    def close_session(self, session: int) -> None:
        """Forget the session (it leaves its batch before the next frame)."""
        with self._lock:
            self.sessions.pop(session, None)
        self._wake.set()

    def session(self, session: int) -> Session:
        found = self.sessions.get(session)
        if found is None:
            raise ValueError(f"no session {session}: open one first (open sessions: {sorted(self.sessions)})")
        return found

    def set_action(self, session: int, action: int) -> None:
        """The action the player holds now (0 = noop when nothing is held). A non-noop action is also queued
        once, so a key tapped between two frames still drives one frame."""
        if not 0 <= action < self.num_actions:
            raise ValueError(f"unknown action id {action}: the models know {self.num_actions} actions")
        with self._lock:
            found = self.session(session)
            found.held = action
            if action != 0:
                found.presses.append(action)

    def _release_keys(self, session: Session) -> None:
        with self._lock:
            session.held = 0
            session.presses.clear()

    def request(self, session: int, kind: str, value=None) -> None:
        """Queue a command for the worker: ("model", name), ("reset", episode or None), ("pause", bool).
        Raises queue.Full when COMMAND_QUEUE commands are already waiting."""
        if kind not in ("model", "reset", "pause"):
            raise ValueError(f"unknown command {kind!r}")
        if kind == "model" and value not in self.models:
            raise ValueError(f"model {value!r} is not loaded; loaded: {sorted(self.models)}")
        if kind == "reset" and value is not None and not 0 <= value < self.context.num_episodes:
            raise ValueError(f"episode {value} out of range: the context holds {self.context.num_episodes} episodes")
        self.session(session)
        self._commands.put_nowait((session, kind, value))
        self._wake.set()

    def set_watched(self, session: int, watched: bool) -> None:
        """Generate for a session only while a page shows it (no CPU burnt for nobody); unwatched, no key is held."""
        found = self.session(session)
        found.watched = watched
        if not watched:
            self._release_keys(found)
        self._wake.set()

    def status(self, session: int) -> dict:
        found = self.session(session)
        return {"type": "status", "session": found.id, "model": found.model, "episode": found.episode,
                "paused": found.paused, "episodes": self.context.num_episodes, "frames": found.frames_generated}

    def save_video(self, session: int, out_dir: str | Path) -> tuple[Path, int]:
        """Write the session so far (context frames first) as an mp4 in out_dir -> (path, number of frames)."""
        from ..video import upscale, write_video

        with self._lock:
            found = self.session(session)
            frames = [f for f, _ in found.recording]
            model = found.model
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

    def _restart(self, session: Session, episode: int | None = None) -> None:
        """The session starts again from the real context frames of `episode` (default: its current one)."""
        session.episode = session.episode if episode is None else episode
        frames = self.context.frames[session.episode, -self.context_frames:]
        actions = self.context.actions[session.episode, -self.context_frames:].astype(np.int64).tolist()
        with self._lock:
            session.recording.clear()
            session.recording.extend(zip(frames, actions))
            session.presses.clear()
        session.frames_generated = 0
        session.done_times.clear()
        session.rejoin = True

    def _apply(self, session: int, kind: str, value) -> None:
        found = self.sessions.get(session)
        if found is None:  # closed while its command waited
            return
        if kind == "model":
            found.model = value  # the world continues: it joins the other model's batch from its recent frames
        elif kind == "reset":
            self._restart(found, value)
        else:
            found.paused = bool(value)
            self._release_keys(found)  # presses made while paused do not burst out on resume
            found.done_times.clear()
        self.on_event(self.status(session))

    def _sync_batches(self) -> dict[int, Session]:
        """Sessions that stopped (closed, paused, unwatched, reset, switched model) leave their batch, and a batch
        REBASE_FRAMES long is dropped; active sessions that are in none join their model's, from their last `window`
        recorded frames. Returns the sessions it saw (id -> Session)."""
        with self._lock:
            sessions = dict(self.sessions)
        for name, batch in list(self.batches.items()):
            staying = [sid in sessions and sessions[sid].active and sessions[sid].model == name and
                       not sessions[sid].rejoin for sid in batch.sessions]
            if not any(staying) or batch.streamer.stream.cache.position >= REBASE_FRAMES:
                del self.batches[name]
            elif not all(staying):
                batch.streamer.leave([i for i, stays in enumerate(staying) if not stays])
                batch.sessions = [sid for sid, stays in zip(batch.sessions, staying) if stays]
        in_batch = {sid for batch in self.batches.values() for sid in batch.sessions}
        for session in sessions.values():
            if session.active and session.id not in in_batch:
                self._join(session)
        return sessions

    def _join(self, session: Session) -> None:
        model = self.models[session.model]
        with self._lock:
            recent = list(session.recording)[-self.windows[session.model]:]
        frames = torch.from_numpy(np.stack([f for f, _ in recent]))[None].to(model.device)  # uint8 (1, n, H, W, 3)
        actions = torch.tensor([[a for _, a in recent]], dtype=torch.long, device=model.device)
        batch = self.batches.get(session.model)
        with torch.inference_mode(), self._autocast():
            if batch is None:
                streamer = Streamer(model, frames, actions, steps=self.steps_for(session.model), seed=self.seed,
                                    window=self.windows[session.model], compile=self.compile,
                                    temperature=self.temperature, shift=self.shift)
                self.batches[session.model] = Batch(streamer, [session.id])
            else:
                batch.streamer.join(frames, actions)
                batch.sessions.append(session.id)
        session.rejoin = False

    def _next_action(self, session: Session) -> int:
        with self._lock:
            return session.presses.popleft() if session.presses else session.held

    def render_next(self) -> list[Frame]:
        """Generate the next frame of every active session (one batched step per model) with its queued press or
        its held action; record them and return them."""
        known = self._sync_batches()
        frames = []
        for name, batch in self.batches.items():
            sessions = [known[sid] for sid in batch.sessions]
            actions = [self._next_action(s) for s in sessions]
            model = self.models[name]
            action = torch.tensor(actions, dtype=torch.long)
            with torch.inference_mode(), self._autocast():
                pixels, latency = timed(lambda: model.codec.decode(batch.streamer.step(action)[:, 0]).cpu().numpy())
            now = time.perf_counter()
            for session, act, image in zip(sessions, actions, pixels):
                times = session.done_times
                times.append(now)
                fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                with self._lock:
                    session.recording.append((image, act))
                session.action_log.append(act)
                session.frames_generated += 1
                frames.append(Frame(session.id, session.frames_generated, name, session.episode, act, image,
                                    latency, fps))
        return frames

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    while True:
                        self._apply(*self._commands.get_nowait())
                except queue.Empty:
                    pass
                frames = self.render_next()
                if not frames:  # nobody is watching an unpaused session
                    self._wake.wait(0.1)
                    self._wake.clear()
                    for session in list(self.sessions.values()):
                        session.done_times.clear()  # the rate restarts after an idle spell
                for frame in frames:
                    self.on_event(frame)
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


def benchmark(engine: Engine, frames: int, chunk: int = 25, warmup: int = 5, sessions: int = 1) -> dict[str, dict]:
    """Render `frames` frames of `sessions` sessions with each model of the engine, headless (the sessions of a
    model share its batch), in chunks that alternate between the models (so a change in background load hits
    both alike). Returns name -> {fps (session frames per second, all sessions together), latency stats in ms
    (one batched step)}."""
    if frames < 1:
        raise ValueError(f"--benchmark needs at least 1 frame, got {frames}")
    if sessions < 1:
        raise ValueError(f"--sessions must be >= 1, got {sessions}")
    names = list(engine.models)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    walls = dict.fromkeys(names, 0.0)
    actions = [i % engine.num_actions for i in range(frames)]
    ids = [engine.open_session(episode=0) for _ in range(sessions)]

    def start(name: str) -> None:  # every session back to episode 0's context, on model `name`
        for sid in ids:
            engine._apply(sid, "model", name)
            engine._apply(sid, "reset", 0)

    for name in names:  # warm-up: first calls allocate the caches and pick kernels
        start(name)
        for _ in range(warmup):
            engine.render_next()
    done = 0
    while done < frames:
        n = min(chunk, frames - done)
        for name in names:
            start(name)

            def chunk_of_frames():
                for i in range(n):
                    for sid in ids:
                        engine.set_action(sid, actions[done + i])
                    latencies[name].append(engine.render_next()[0].latency)

            walls[name] += timed(chunk_of_frames)[1]
        done += n
    for sid in ids:
        engine.close_session(sid)
    results = {}
    for name in names:
        ms = np.array(latencies[name]) * 1000
        results[name] = {"frames": frames, "sessions": sessions, "fps": frames * sessions / walls[name],
                         "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                         "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max())}
    return results
