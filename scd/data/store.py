"""The scd-video-v1 on-disk dataset format: writing, reading, and clip sampling.

A dataset is a directory::

    meta.json              written last; its presence marks a complete dataset
    frames_00000.npy       uint8 (n, H, W, 3), RGB
    actions_00000.npy      int64 (n,)
    frames_00001.npy ...

Shards are plain ``.npy`` files so they open with ``np.load(mmap_mode="r")``. An episode lives
inside a single shard, at rows ``offset : offset + length``. ``meta.json`` holds::

    {"format": "scd-video-v1", "source": "crafter", "frame_shape": [H, W, 3],
     "num_actions": 17, "action_names": [...], "fps": 10,
     "episodes": [{"shard": 0, "offset": 0, "length": 300, "seed": 7}, ...],
     "recorder": {...how the data was made: policy parameters, seeds, versions...}}

Action convention (the models rely on it): ``actions[i]`` is the action that produced frame ``i``
from frame ``i - 1``. The first frame of an episode (the reset observation) has ``actions[0] == 0``,
the no-op.

Pixels enter a model as float32 ``(..., 3, H, W)`` in ``[-1, 1]`` (see :func:`frames_to_model`) and
leave it through :func:`frames_to_uint8`; these are the pixel codec's conversions (scd.codec.PixelCodec), and
consumers of a model go through its codec (``model.codec``), which may be a latent one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scd.fileio import atomic_write

FORMAT = "scd-video-v1"
META_FILE = "meta.json"
DEFAULT_SHARD_BYTES = 64 * 1024 * 1024  # frames per shard are chosen to stay near this size


def frames_file(shard: int) -> str:
    return f"frames_{shard:05d}.npy"


def actions_file(shard: int) -> str:
    return f"actions_{shard:05d}.npy"


# --------------------------------------------------------------------------------------------
# Frame conversions and resizing


def frames_to_model(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB frames ``(..., H, W, 3)`` in [0, 255] -> float32 tensor ``(..., 3, H, W)`` in [-1, 1].

    Accepts numpy arrays (memory-mapped ones included; they are copied) and torch tensors.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"frames_to_model expects uint8 frames, got numpy dtype {frames.dtype}")
        tensor = torch.from_numpy(np.array(frames, copy=True))
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames_to_model expects uint8 frames, got torch dtype {frames.dtype}")
        tensor = frames
    else:
        raise ValueError(f"frames_to_model expects a numpy array or torch tensor, got {type(frames).__name__}")
    if tensor.ndim < 3 or tensor.shape[-1] != 3:
        raise ValueError(f"frames_to_model expects shape (..., H, W, 3), got {tuple(tensor.shape)}")
    return (tensor.movedim(-1, -3).to(torch.float32) / 127.5 - 1.0).contiguous()


def frames_to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """float frames ``(..., 3, H, W)`` in [-1, 1] -> uint8 numpy ``(..., H, W, 3)`` in [0, 255].

    Values outside [-1, 1] are clipped; rounding is to nearest, so
    ``frames_to_uint8(frames_to_model(x)) == x`` exactly for any uint8 ``x``.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames_to_uint8 expects a torch tensor or numpy array, got {type(frames).__name__}")
    if not frames.is_floating_point():
        raise ValueError(f"frames_to_uint8 expects float frames in [-1, 1], got dtype {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames_to_uint8 expects shape (..., 3, H, W), got {tuple(frames.shape)}")
    pixels = ((frames.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def clip_to_model(frames: np.ndarray, actions) -> tuple[torch.Tensor, torch.Tensor]:
    """Recorded frames uint8 ``(n, H, W, 3)`` and actions ``(m,)`` -> the model's tensors: float32 frames
    ``(n, 3, H, W)`` in [-1, 1] and int64 actions ``(m,)``."""
    return frames_to_model(frames), torch.from_numpy(np.array(actions, dtype=np.int64))


def center_crop_square(frame: np.ndarray) -> np.ndarray:
    """Crop ``(H, W, C)`` to the centred ``(s, s, C)`` square, ``s = min(H, W)`` (odd remainders go right/bottom)."""
    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frame[top : top + s, left : left + s]


def resize_area(frame: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Resize a uint8 RGB frame ``(H, W, 3)`` to ``(height, width, 3)`` by area averaging.

    Every output pixel is the mean of the input area it covers (Pillow's BOX filter, fixed-point
    arithmetic, so the result is deterministic). ``width`` defaults to ``height``.
    """
    width = height if width is None else width
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"resize_area expects a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame)
    image = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(image.resize((width, height), Image.Resampling.BOX))


# --------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class EpisodeRef:
    """Where an episode's frames live: rows ``offset : offset + length`` of shard ``shard``."""

    shard: int
    offset: int
    length: int
    seed: int
    name: str | None = None  # provenance for imported files (e.g. the source file name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shard": self.shard, "offset": self.offset, "length": self.length, "seed": self.seed}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class DatasetMeta:
    """Contents of ``meta.json``; ``frame_shape`` is ``(H, W, 3)`` as stored on disk."""

    source: str
    frame_shape: tuple[int, int, int]
    num_actions: int
    action_names: tuple[str, ...]
    fps: int
    episodes: tuple[EpisodeRef, ...]
    recorder: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "frame_shape": list(self.frame_shape),
            "num_actions": self.num_actions,
            "action_names": list(self.action_names),
            "fps": self.fps,
            "episodes": [ep.to_json() for ep in self.episodes],
            "recorder": self.recorder,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> DatasetMeta:
        """Parse and validate; ``where`` (the meta.json path) prefixes every error message."""

        def fail(msg: str) -> ValueError:
            return ValueError(f"{where}: {msg}")

        def get_int(obj: dict, key: str, ctx: str, minimum: int = 0) -> int:
            value = obj.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise fail(f"{ctx}'{key}' must be an integer >= {minimum}, got {value!r}")
            return value

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise fail(f"'format' is {data.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in ("source", "frame_shape", "num_actions", "action_names", "fps", "episodes") if k not in data]
        if missing:
            raise fail(f"missing key(s) {', '.join(missing)}")
        shape = data["frame_shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise fail(f"'frame_shape' must be [H, W, 3] with positive integers, got {shape!r}")
        num_actions = get_int(data, "num_actions", "", minimum=1)
        names = data["action_names"]
        if not isinstance(names, list) or len(names) != num_actions or not all(isinstance(n, str) for n in names):
            raise fail(f"'action_names' must be a list of {num_actions} strings, got {names!r}")
        fps = get_int(data, "fps", "", minimum=1)
        if not isinstance(data["episodes"], list):
            raise fail("'episodes' must be a list")
        episodes = []
        for i, ep in enumerate(data["episodes"]):
            if not isinstance(ep, dict):
                raise fail(f"episode {i} must be an object, got {ep!r}")
            name = ep.get("name")
            episodes.append(
                EpisodeRef(
                    shard=get_int(ep, "shard", f"episode {i}: "),
                    offset=get_int(ep, "offset", f"episode {i}: "),
                    length=get_int(ep, "length", f"episode {i}: ", minimum=1),
                    seed=get_int(ep, "seed", f"episode {i}: "),
                    name=str(name) if name is not None else None,
                )
            )
        recorder = data.get("recorder", {})
        if not isinstance(recorder, dict):
            raise fail(f"'recorder' must be an object, got {type(recorder).__name__}")
        return cls(
            source=str(data["source"]),
            frame_shape=(shape[0], shape[1], shape[2]),
            num_actions=num_actions,
            action_names=tuple(names),
            fps=fps,
            episodes=tuple(episodes),
            recorder=recorder,
        )


# --------------------------------------------------------------------------------------------
# Writing


def _is_dataset_file(name: str) -> bool:
    return name == META_FILE or (
        name.endswith(".npy") and (name.startswith("frames_") or name.startswith("actions_"))
    ) or (name.startswith(".") and name.endswith(".tmp"))


class DatasetWriter:
    """Writes episodes into an scd-video-v1 directory, shard by shard.

    Episodes are buffered in memory and flushed to a shard once the buffer reaches ``shard_bytes``
    (an episode never straddles two shards; one longer than ``shard_bytes`` gets a shard of its own).
    Each shard is written to a temporary name and renamed into place; ``meta.json`` is written last
    by :meth:`finish`, so a directory without it is an incomplete dataset.

    ``out_dir`` must not exist or be empty. With ``overwrite=True`` an existing scd dataset there is
    replaced (its meta.json is removed first); a directory holding other files is never touched.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        frame_shape: Sequence[int],
        *,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        overwrite: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        if len(self.frame_shape) != 3 or self.frame_shape[2] != 3:
            raise ValueError(f"frame_shape must be (H, W, 3), got {self.frame_shape}")
        if shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
        self.shard_bytes = shard_bytes
        self._prepare_dir(overwrite)
        self._buffer: list[tuple[np.ndarray, np.ndarray, int, str | None]] = []
        self._buffer_bytes = 0
        self._episodes: list[EpisodeRef] = []
        self._shard = 0
        self.max_action = 0
        self._finished = False

    def _prepare_dir(self, overwrite: bool) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"output path {self.out_dir} exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(p.name for p in self.out_dir.iterdir())
        if not existing:
            return
        foreign = [n for n in existing if not _is_dataset_file(n)]
        if foreign:
            raise ValueError(
                f"output directory {self.out_dir} is not empty and holds files that are not part of an scd "
                f"dataset (e.g. {foreign[0]}); choose an empty or new directory"
            )
        if not overwrite:
            what = "a dataset" if META_FILE in existing else "files of an unfinished dataset (no meta.json)"
            raise ValueError(
                f"output directory {self.out_dir} already holds {what}; pass overwrite=True (--overwrite) to replace it"
            )
        (self.out_dir / META_FILE).unlink(missing_ok=True)  # the old dataset is invalid from here on
        for name in existing:
            (self.out_dir / name).unlink(missing_ok=True)

    def add_episode(self, frames: np.ndarray, actions: np.ndarray, seed: int, name: str | None = None) -> None:
        """Queue one episode: ``frames`` uint8 ``(n, H, W, 3)``, ``actions`` integers ``(n,)`` >= 0."""
        if self._finished:
            raise ValueError("DatasetWriter.add_episode called after finish()")
        frames = np.asarray(frames)
        actions = np.asarray(actions)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != self.frame_shape:
            raise ValueError(
                f"episode frames must be uint8 (n, {', '.join(map(str, self.frame_shape))}), "
                f"got {frames.dtype} {frames.shape}"
            )
        if not np.issubdtype(actions.dtype, np.integer) or actions.shape != (frames.shape[0],):
            raise ValueError(f"episode actions must be integers of shape ({frames.shape[0]},), got {actions.dtype} {actions.shape}")
        if frames.shape[0] == 0:
            raise ValueError("cannot write an empty episode (0 frames)")
        if actions.min() < 0:
            raise ValueError(f"episode actions must be >= 0, got minimum {actions.min()}")
        self.max_action = max(self.max_action, int(actions.max()))
        if self._buffer and self._buffer_bytes + frames.nbytes > self.shard_bytes:
            self._flush()
        self._buffer.append((frames, actions.astype(np.int64), int(seed), name))
        self._buffer_bytes += frames.nbytes

    def _flush(self) -> None:
        if not self._buffer:
            return
        offset = 0
        for frames, _, seed, name in self._buffer:
            self._episodes.append(EpisodeRef(self._shard, offset, frames.shape[0], seed, name))
            offset += frames.shape[0]
        all_frames = np.concatenate([b[0] for b in self._buffer])
        all_actions = np.concatenate([b[1] for b in self._buffer])
        atomic_write(self.out_dir / frames_file(self._shard), lambda f: np.save(f, all_frames, allow_pickle=False))
        atomic_write(self.out_dir / actions_file(self._shard), lambda f: np.save(f, all_actions, allow_pickle=False))
        self._shard += 1
        self._buffer, self._buffer_bytes = [], 0

    def finish(
        self,
        *,
        source: str,
        num_actions: int,
        action_names: Sequence[str],
        fps: int,
        recorder: dict[str, Any] | None = None,
    ) -> DatasetMeta:
        """Flush the last shard and write ``meta.json``; returns the metadata written."""
        self._flush()
        if not self._episodes:
            raise ValueError(f"no episodes were written to {self.out_dir}")
        if self.max_action >= num_actions:
            raise ValueError(f"actions go up to {self.max_action} but num_actions is {num_actions}")
        meta = DatasetMeta(
            source=source,
            frame_shape=self.frame_shape,  # type: ignore[arg-type]
            num_actions=int(num_actions),
            action_names=tuple(action_names),
            fps=int(fps),
            episodes=tuple(self._episodes),
            recorder=dict(recorder or {}),
        )
        DatasetMeta.from_json(meta.to_json(), where="meta to write")  # same checks as on reading
        text = json.dumps(meta.to_json(), indent=1) + "\n"
        atomic_write(self.out_dir / META_FILE, lambda f: f.write(text.encode()))
        self._finished = True
        return meta


# --------------------------------------------------------------------------------------------
# Reading


def _open_npy(path: Path, dtype: np.dtype, trailing: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing shard file {path} (listed in meta.json)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot memory-map the shard, the file is truncated or corrupt ({err})") from None
    if array.dtype != dtype or array.ndim != 1 + len(trailing) or array.shape[1:] != trailing:
        want = "(n" + "".join(f", {s}" for s in trailing) + ")"
        raise ValueError(f"{path}: expected {np.dtype(dtype).name} {want}, found {array.dtype} {array.shape}")
    return array


class VideoStore:
    """Read-only, memory-mapped view of an scd-video-v1 dataset directory.

    Opening validates everything: meta.json, every shard file named by an episode, shard shapes,
    dtypes, lengths, and the action range. Errors name the offending file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"dataset directory {self.path} does not exist")
        if not self.path.is_dir():
            raise ValueError(f"dataset path {self.path} is not a directory")
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: {self.path} is not a complete {FORMAT} dataset "
                "(meta.json is written last, so the recording may have been interrupted)"
            )
        try:
            data = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_path}: corrupt JSON ({err})") from None
        self.meta = DatasetMeta.from_json(data, where=str(meta_path))

        self._frames: dict[int, np.ndarray] = {}
        self._actions: dict[int, np.ndarray] = {}
        h, w, c = self.meta.frame_shape
        for shard in sorted({ep.shard for ep in self.meta.episodes}):
            frames = _open_npy(self.path / frames_file(shard), np.dtype(np.uint8), (h, w, c))
            actions = _open_npy(self.path / actions_file(shard), np.dtype(np.int64), ())
            if len(frames) != len(actions):
                raise ValueError(
                    f"{self.path / actions_file(shard)}: holds {len(actions)} actions but "
                    f"{frames_file(shard)} holds {len(frames)} frames"
                )
            if len(actions) and (actions.min() < 0 or actions.max() >= self.meta.num_actions):
                raise ValueError(
                    f"{self.path / actions_file(shard)}: actions span [{actions.min()}, {actions.max()}], "
                    f"outside [0, {self.meta.num_actions - 1}] (num_actions in meta.json)"
                )
            self._frames[shard], self._actions[shard] = frames, actions
        for i, ep in enumerate(self.meta.episodes):
            n = len(self._frames[ep.shard])
            if ep.offset + ep.length > n:
                raise ValueError(
                    f"{self.path / frames_file(ep.shard)}: holds {n} frames but episode {i} in meta.json needs "
                    f"rows {ep.offset}..{ep.offset + ep.length - 1}; the shard is truncated or meta.json is wrong"
                )

    def __reduce__(self):
        # Pickle by path (DataLoader workers under spawn): re-open the memory maps instead of copying them.
        return (type(self), (self.path,))

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"VideoStore({str(self.path)!r}, source={self.meta.source!r}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, frame_shape={self.meta.frame_shape})"
        )

    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    @property
    def num_frames(self) -> int:
        return self.meta.num_frames

    @property
    def num_actions(self) -> int:
        return self.meta.num_actions

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.meta.action_names

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` as stored."""
        return self.meta.frame_shape

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.array([ep.length for ep in self.meta.episodes], dtype=np.int64)

    def episode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode ``i`` as memory-mapped, read-only views: uint8 frames ``(n, H, W, 3)``, int64 actions ``(n,)``."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: {self.path} has {self.num_episodes} episodes")
        ep = self.meta.episodes[i]
        rows = slice(ep.offset, ep.offset + ep.length)
        return self._frames[ep.shard][rows], self._actions[ep.shard][rows]

    def clip(self, i: int, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``start .. start + length - 1`` of episode ``i`` and their actions, as the model's tensors
        (``clip_to_model``)."""
        frames, actions = self.episode(i)
        window = slice(start, start + length)
        return clip_to_model(frames[window], actions[window])

    def action_counts(self) -> np.ndarray:
        """Histogram of all actions, int64 ``(num_actions,)`` (first frames' no-ops included)."""
        counts = np.zeros(self.num_actions, dtype=np.int64)
        for i in range(self.num_episodes):
            counts += np.bincount(self.episode(i)[1], minlength=self.num_actions)
        return counts


# --------------------------------------------------------------------------------------------
# Clips for training


class ClipDataset(torch.utils.data.Dataset):
    """Every window of ``clip_len`` consecutive frames inside one episode (start positions ``stride`` apart).

    Item ``i`` is ``(frames, actions)``: frames float32 ``(clip_len, 3, H, W)`` in [-1, 1] and actions
    int64 ``(clip_len,)``, where ``actions[t]`` produced ``frames[t]`` from the frame before it
    (for a clip that starts an episode, ``actions[0]`` is the reset no-op 0).

    ``episodes`` restricts the clips to these episode indices (e.g. a train/validation split);
    episodes shorter than ``clip_len`` are skipped.

    ``codec`` (scd.codec): frames in its space instead, ``(clip_len, *codec.frame_shape)`` (the pixel codec's are
    the frames above). A latent codec encodes the whole data set once (``cache_latents``: into a cache file next
    to the data, scd.codec.latents; on ``encode_device``, e.g. the training GPU) or, without caching, each clip
    when it is read.
    """

    def __init__(
        self,
        path_or_store: str | os.PathLike | VideoStore,
        clip_len: int,
        episodes: Iterable[int] | None = None,
        stride: int = 1,
        codec=None,
        cache_latents: bool = True,
        encode_device: str | torch.device | None = None,
    ) -> None:
        self.store = path_or_store if isinstance(path_or_store, VideoStore) else VideoStore(path_or_store)
        self.codec, self._latents = codec, None
        if codec is not None:
            codec.check_pixel_shape(self.store.frame_shape, f"the data set {self.store.path}")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.clip_len, self.stride = int(clip_len), int(stride)
        chosen = list(range(self.store.num_episodes)) if episodes is None else [int(e) for e in episodes]
        for e in chosen:
            if not 0 <= e < self.store.num_episodes:
                raise ValueError(f"episode index {e} out of range: {self.store.path} has {self.store.num_episodes} episodes")
        lengths = self.store.episode_lengths
        self.episodes = tuple(e for e in chosen if lengths[e] >= self.clip_len)
        if not self.episodes:
            longest = int(lengths[chosen].max()) if chosen else 0
            raise ValueError(
                f"clip_len={self.clip_len} is longer than every selected episode of {self.store.path} "
                f"({len(chosen)} episodes, longest has {longest} frames)"
            )
        counts = np.array([(lengths[e] - self.clip_len) // self.stride + 1 for e in self.episodes], dtype=np.int64)
        self._ends = np.cumsum(counts)  # clip i belongs to the first episode with _ends > i
        if codec is not None and codec.kind != "pixel" and cache_latents:
            from scd.codec.latents import encode_store, episode_rows

            self._latents = encode_store(self.store, codec, device=encode_device)
            self._rows = episode_rows(self.store)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def clip_location(self, i: int) -> tuple[int, int]:
        """``(episode index, first frame)`` of clip ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        i = i % len(self)
        k = int(np.searchsorted(self._ends, i, side="right"))
        before = int(self._ends[k - 1]) if k else 0
        return self.episodes[k], (i - before) * self.stride

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        episode, start = self.clip_location(i)
        if self.codec is None or self.codec.kind == "pixel":  # the pixel codec's frames, as they always were
            return self.store.clip(episode, start, self.clip_len)
        frames, actions = self.store.episode(episode)
        window = slice(start, start + self.clip_len)
        if self._latents is not None:
            first = int(self._rows[episode]) + start
            latents = torch.from_numpy(np.array(self._latents[first : first + self.clip_len]))
        else:
            latents = self.codec.encode(frames[window]).cpu()
        return latents, torch.from_numpy(np.array(actions[window], dtype=np.int64))

    @property
    def num_actions(self) -> int:
        return self.store.num_actions

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.store.action_names

    def description(self) -> dict:
        """What a checkpoint records of the data it was trained on."""
        meta = self.store.meta
        return {"path": str(self.store.path.resolve()), "source": meta.source,
                "action_names": list(self.store.action_names), "fps": meta.fps, "clips": len(self)}

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``: the shape of one model-side frame (``(3, H, W)`` pixels, or the codec's)."""
        if self.codec is not None:
            return self.codec.frame_shape
        h, w, c = self.store.frame_shape
        return (c, h, w)
