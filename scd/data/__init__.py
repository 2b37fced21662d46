"""Video data: the scd-video-v1 on-disk format, recording (Crafter, Atari), importers, clip datasets.

Frames are stored as uint8 ``(H, W, 3)`` and enter models as float32 ``(3, H, W)`` in [-1, 1].
``actions[t]`` is the action that produced frame ``t``; ``actions[0] = 0`` (no-op) at an episode start.
Importing this package loads no game environments or PyAV; those load on first use.

``scd.data.record`` is the recording module; import the function as
``from scd.data.record import record`` (the package does not re-export it, so the module name
stays a module).
"""

from scd.data.formats import import_teco, import_ucf101, read_video
from scd.data.record import BENCHMARKS, episode_seed, record_benchmark
from scd.data.store import (
    FORMAT,
    ClipDataset,
    DatasetMeta,
    DatasetWriter,
    EpisodeRef,
    VideoStore,
    center_crop_square,
    clip_to_model,
    frames_to_model,
    frames_to_uint8,
    resize_area,
)

__all__ = [
    "BENCHMARKS",
    "FORMAT",
    "ClipDataset",
    "DatasetMeta",
    "DatasetWriter",
    "EpisodeRef",
    "VideoStore",
    "center_crop_square",
    "clip_to_model",
    "episode_seed",
    "frames_to_model",
    "frames_to_uint8",
    "import_teco",
    "import_ucf101",
    "read_video",
    "record_benchmark",
    "resize_area",
]
