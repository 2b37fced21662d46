"""Context files: a few real episodes (frames + the actions that produced them) to start rollouts from.

A context file is an .npz with frames uint8 (E, n, H, W, 3), actions int64 (E, n) and optionally action_names;
scd ships one for Crafter (scd/assets/crafter-context.npz), so `scd generate` and `scd play` work without
recording a data set first. A recorded data set directory serves the same purpose through `load_context`.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import SHIPPED_CONTEXT as DEFAULT_CONTEXT
from .store import VideoStore


@dataclass(frozen=True)
class ContextSet:
    """Real opening frames to start a session from: E episodes of frames uint8 (E, n, H, W, 3) and the actions
    int64 (E, n) that produced them. action_names: the game's action names when the source records them."""

    frames: np.ndarray
    actions: np.ndarray
    action_names: tuple[str, ...] | None
    source: str

    def __post_init__(self) -> None:
        f, a = self.frames, self.actions
        if f.dtype != np.uint8 or f.ndim != 5 or f.shape[-1] != 3 or min(f.shape[:2]) < 1:
            raise ValueError(f"{self.source}: context frames must be uint8 (E, n, H, W, 3), got {f.dtype} {f.shape}")
        if not np.issubdtype(a.dtype, np.integer) or a.shape != f.shape[:2]:
            raise ValueError(f"{self.source}: context actions must be integers of shape {f.shape[:2]}, "
                             f"got {a.dtype} {a.shape}")
        if a.min() < 0:
            raise ValueError(f"{self.source}: context actions must be >= 0, got {a.min()}")

    @property
    def num_episodes(self) -> int:
        return self.frames.shape[0]

    @property
    def length(self) -> int:
        return self.frames.shape[1]


def load_context_npz(path: str | Path) -> ContextSet:
    """A context file: frames uint8 (E, C0, H, W, 3), actions int64 (E, C0), optionally action_names (num_actions,)."""
    path = Path(path)
    expected = "expected frames uint8 (E, C0, H, W, 3) and actions int64 (E, C0)"
    if not path.is_file():
        raise FileNotFoundError(f"context file {path} not found")
    if not zipfile.is_zipfile(path):  # checked first: np.load would try to unpickle it and talk about allow_pickle
        raise ValueError(f"context file {path} is not a complete .npz archive (truncated or another format; {expected})")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            arrays = {name: data[name] for name in ("frames", "actions", "action_names") if name in files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged member
        raise ValueError(f"context file {path} is truncated or damaged ({err})") from None
    except ValueError:  # object arrays: numpy refuses to unpickle them, and so do we
        raise ValueError(f"context file {path} holds Python objects, not plain arrays ({expected})") from None
    missing = {"frames", "actions"} - files
    if missing:
        raise ValueError(f"context file {path} lacks the arrays {sorted(missing)} ({expected})")
    names = tuple(str(n) for n in arrays["action_names"]) if "action_names" in arrays else None
    return ContextSet(arrays["frames"], arrays["actions"], names, str(path))


def load_context_dataset(path: str | Path, length: int, max_episodes: int = 256) -> ContextSet:
    """The first `length` frames (and actions) of each episode of a recorded data set (scd-video-v1)."""
    store = VideoStore(path)
    lengths = store.episode_lengths  # built from the metadata on each access
    chosen = [i for i in range(store.num_episodes) if lengths[i] >= length][:max_episodes]
    if not chosen:
        raise ValueError(f"data set {path} has no episode of at least {length} frames for the context")
    frames = np.stack([np.asarray(store.episode(i)[0][:length]) for i in chosen])
    actions = np.stack([np.asarray(store.episode(i)[1][:length]) for i in chosen])
    return ContextSet(frames, actions, tuple(store.action_names), str(path))


def load_context(path: str | Path | None, length: int) -> ContextSet:
    """Context frames from a .npz context file or a data set directory; None means the shipped Crafter file."""
    if path is None:
        if not DEFAULT_CONTEXT.is_file():
            raise FileNotFoundError(f"the shipped context frames {DEFAULT_CONTEXT} are missing (not part of this "
                                    "install yet); pass --data with a recorded data set directory or a context .npz")
        path = DEFAULT_CONTEXT
    path = Path(path)
    if path.is_dir():
        return load_context_dataset(path, length)
    return load_context_npz(path)


def load_episode(path: str | Path, episode: int, num_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """One whole episode of a data set directory or a context file: frames uint8 (n, H, W, 3) and actions (n,),
    for a model that knows `num_actions` actions."""
    if Path(path).is_dir():
        store = VideoStore(path)
        count, actions_known = store.num_episodes, store.num_actions
        get = store.episode
    else:
        ctx = load_context_npz(path)
        count, actions_known = ctx.num_episodes, int(ctx.actions.max()) + 1
        get = lambda e: (ctx.frames[e], ctx.actions[e])  # noqa: E731
    if actions_known > num_actions:
        raise ValueError(f"{path} has {actions_known} actions, the model knows {num_actions}")
    if not 0 <= episode < count:
        raise ValueError(f"--episode {episode} out of range: {path} has {count} episodes")
    return get(episode)


def save_context_npz(path: str | Path, context: ContextSet) -> Path:
    """Write a context file (the format `load_context_npz` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.array(context.action_names or [], dtype=str)
    np.savez_compressed(path, frames=context.frames, actions=context.actions.astype(np.int64), action_names=names)
    return path
