"""Single frames of a recorded data set, for training and scoring codecs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from scd.data.store import VideoStore


class FrameSet:
    """Every frame of the chosen episodes of an scd-video-v1 data set (default all), under one flat index.

    Hold out by episode with `episodes`, or score on another data set (a benchmark recording)."""

    def __init__(self, data: str | os.PathLike | VideoStore, episodes: Iterable[int] | None = None):
        self.store = data if isinstance(data, VideoStore) else VideoStore(data)
        n = self.store.num_episodes
        self.episodes = tuple(range(n)) if episodes is None else tuple(int(e) for e in episodes)
        bad = [e for e in self.episodes if not 0 <= e < n]
        if bad or not self.episodes:
            raise ValueError(f"episodes {list(self.episodes)} do not select episodes of {self.store.path} "
                             f"(it has {n})")
        self._ends = np.cumsum(self.store.episode_lengths[list(self.episodes)])  # frame i: first episode ending > i

    def __len__(self) -> int:
        return int(self._ends[-1])

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return self.store.frame_shape

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 frames (n, H, W, 3) at these flat indices."""
        rows = []
        for i in indices:
            k = int(np.searchsorted(self._ends, i, side="right"))
            first = int(self._ends[k - 1]) if k else 0
            rows.append(self.store.episode(self.episodes[k])[0][i - first])
        return torch.from_numpy(np.stack(rows))

    def spread(self, n: int) -> list[int]:
        """`n` indices spread evenly over all frames (every frame when n >= len)."""
        if n >= len(self):
            return list(range(len(self)))
        return np.linspace(0, len(self) - 1, n).round().astype(int).tolist()

    def batches(self, indices: Sequence[int], size: int) -> Iterable[torch.Tensor]:
        """The frames at `indices`, `size` at a time: uint8 (<= size, H, W, 3)."""
        for start in range(0, len(indices), size):
            yield self.batch(indices[start : start + size])

    def describe(self) -> dict:
        """What a codec checkpoint records about its data."""
        return {"path": str(self.store.path), "source": self.store.meta.source, "frames": len(self),
                "episodes": len(self.episodes), "frame_shape": list(self.pixel_shape)}
