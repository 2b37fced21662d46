"""How the streaming path is timed, everywhere (`scd generate`, `scd quality`, `scd bench`, `scd play`, `scd eval`):
wall-clock seconds around the work, with a GPU's queued work waited for on both sides, so the seconds are the
GPU's too."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on a CUDA device (nothing to wait for elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], T], device: torch.device | str | None = None) -> tuple[T, float]:
    """(work(), the seconds it took) on `device`."""
    sync(device)
    start = time.perf_counter()
    result = work()
    sync(device)
    return result, time.perf_counter() - start


def timed_frames(frames: Iterable[T], device: torch.device | str | None = None) -> Iterator[tuple[T, float]]:
    """Each item of a rollout (e.g. `sampling.rollout`) with the seconds it took to make."""
    frames = iter(frames)
    while True:
        try:
            yield timed(lambda: next(frames), device)
        except StopIteration:
            return


def frame_seconds(times: list[float]) -> dict[str, float]:
    """Seconds of the first frame (context prefill included) and the mean of the frames after it."""
    steady = times[1:] or times
    return {"first_frame_s": times[0], "seconds_per_frame": sum(steady) / len(steady)}
