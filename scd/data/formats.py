"""Import the paper's benchmark formats (TECO-Minecraft, UCF-101) into scd-video-v1 datasets.

Both importers write the same on-disk format as :func:`scd.data.record.record`, so one
:class:`scd.data.store.ClipDataset` serves recorded and imported data alike.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from scd.data.store import DEFAULT_SHARD_BYTES, DatasetMeta, DatasetWriter, center_crop_square, resize_area

VIDEO_SUFFIXES = (".avi",)


def _npz_episodes(paths: list[Path]) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """Yield ``(path, video uint8 (T, H, W, 3), actions (T,))`` per TECO .npz, validating each."""
    for path in paths:
        if not zipfile.is_zipfile(path):  # else np.load would try to unpickle it and talk about allow_pickle
            raise ValueError(f"{path}: not a complete .npz archive (truncated or another format)")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable .npz file ({err})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: holds a single array, not an .npz archive with 'video' and 'actions'")
        with data:
            missing = [k for k in ("video", "actions") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(data.files) or 'none'}); "
                    "a TECO episode needs 'video' (T, H, W, 3) uint8 and 'actions' (T,) int"
                )
            try:
                video, actions = data["video"], data["actions"]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:  # member truncated, corrupt
                raise ValueError(f"{path}: corrupt array data ({err})") from None
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{path}: 'video' must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
        if not np.issubdtype(actions.dtype, np.integer) or actions.ndim != 1:
            raise ValueError(f"{path}: 'actions' must be a 1-D integer array, got {actions.dtype} {actions.shape}")
        if len(actions) != len(video):
            raise ValueError(f"{path}: 'actions' has {len(actions)} entries but 'video' has {len(video)} frames")
        if len(video) == 0:
            raise ValueError(f"{path}: the episode has no frames")
        if actions.min() < 0:
            raise ValueError(f"{path}: 'actions' must be >= 0, found {actions.min()}")
        yield path, video, actions


def import_teco(
    npz_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_actions: int | None = None,
    *,
    fps: int = 20,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> DatasetMeta:
    """Convert TECO-style episodes (one .npz per episode) into an scd-video-v1 dataset.

    Each ``*.npz`` in ``npz_dir`` (sorted by name) holds ``video`` uint8 ``(T, H, W, 3)`` (TECO-Minecraft:
    ``(300, 128, 128, 3)``) and ``actions`` int ``(T,)``. TECO already uses this library's convention
    (``actions[t]`` leads from frame ``t-1`` to frame ``t``; its model never reads ``actions[0]``), so
    actions are copied as they are except ``actions[0]``, which is set to the no-op 0.
    ``num_actions`` defaults to max(action) + 1 over all files. Frames keep their resolution.
    """
    root = Path(npz_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"TECO directory {root} does not exist or is not a directory")
    paths = sorted(root.glob("*.npz"))
    if not paths:
        raise FileNotFoundError(f"no .npz files in {root}")
    if num_actions is not None and num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")

    writer: DatasetWriter | None = None
    max_action = 0
    for path, video, actions in _npz_episodes(paths):
        if writer is None:
            writer = DatasetWriter(out_dir, video.shape[1:], shard_bytes=shard_bytes, overwrite=overwrite)
        elif video.shape[1:] != writer.frame_shape:
            raise ValueError(f"{path}: frames are {video.shape[1:]}, but earlier files have {writer.frame_shape}")
        actions = actions.astype(np.int64)
        actions[0] = 0
        max_action = max(max_action, int(actions.max()))
        if num_actions is not None and max_action >= num_actions:
            raise ValueError(f"{path}: action {int(actions.max())} is out of range for num_actions={num_actions}")
        writer.add_episode(video, actions, seed=0, name=path.name)
    assert writer is not None
    n = num_actions if num_actions is not None else max_action + 1
    return writer.finish(
        source="teco",
        num_actions=n,
        action_names=[f"action_{k}" for k in range(n)],
        fps=fps,
        recorder={"importer": "import_teco", "npz_dir": str(root), "files": len(paths), "first_action_zeroed": True},
    )


def _video_paths(avi_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(avi_dir_or_files, (str, os.PathLike)):
        root = Path(avi_dir_or_files)
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            if not paths:
                raise FileNotFoundError(f"no .avi files under {root}")
            return paths
        candidates = [root]
    else:
        candidates = [Path(p) for p in avi_dir_or_files]
    if not candidates:
        raise ValueError("no video files given")
    for path in candidates:
        if not path.is_file():
            raise FileNotFoundError(f"video file {path} does not exist")
    return candidates


def read_video(path: str | os.PathLike, size: int, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video with PyAV; returns uint8 ``(T, size, size, 3)`` frames (centre square crop, area
    resize) and the stream's frame rate."""
    import av

    path = Path(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or Fraction(25)
            for frame in container.decode(stream):
                frames.append(resize_area(center_crop_square(frame.to_ndarray(format="rgb24")), size))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode video ({err})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), float(rate)


def import_ucf101(
    avi_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    size: int = 64,
    *,
    max_frames: int | None = None,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> DatasetMeta:
    """Convert UCF-101 videos into an scd-video-v1 dataset, one episode per video.

    ``avi_dir_or_files`` is a directory (searched recursively for ``*.avi``, sorted), one file, or a list
    of files. Frames are centre-cropped to a square and area-resized to ``size x size``; ``max_frames``
    keeps only the first frames of each video. UCF-101 has no actions: every action is 0 and
    ``num_actions`` is 1. The dataset's fps is the first video's rate, rounded.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    paths = _video_paths(avi_dir_or_files)
    writer = DatasetWriter(out_dir, (size, size, 3), shard_bytes=shard_bytes, overwrite=overwrite)
    fps = None
    for path in paths:
        frames, rate = read_video(path, size, max_frames)
        fps = fps or max(1, round(rate))
        writer.add_episode(frames, np.zeros(len(frames), dtype=np.int64), seed=0, name=path.name)
    return writer.finish(
        source="ucf101",
        num_actions=1,
        action_names=["none"],
        fps=fps or 25,
        recorder={
            "importer": "import_ucf101",
            "files": len(paths),
            "size": size,
            "max_frames": max_frames,
            "resize": "centre square crop, area average (PIL BOX)",
        },
    )
