"""The latents of a whole data set, encoded once and cached next to it, for training a latent world model.

A training step reads `batch x clip_len` frames and overlapping clips share frames, so encoding every clip when it
is drawn repeats the codec's work about clip_len times over; encoding each frame once and reading rows of the
cache is cheaper whenever a run takes more steps than the data set has frames / (batch x clip_len). Measured on a busy 2-core
CPU with a 128x128 f16c32 codec: encoding 720 frames once took 21 s; encoding each drawn clip instead added 0.88 s
to every step of 8 clips x 8 frames (an scd-xs latent step took 2.6 s), while reading the cache takes 0.1 ms. The cache is DATA/latents/<key>.npy, float32 (frames, C, h, w), episodes in
order; the key is made of the codec's fingerprint and the data set's meta.json and shard sizes, so another codec,
or a data set recorded again at the same path, never reads stale latents.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scd.data.store import META_FILE, VideoStore, frames_file
from scd.fileio import sha256_file

from .base import Codec

CACHE_DIR = "latents"


def cache_path(store: VideoStore, codec: Codec) -> Path:
    """Where the latents of `store` under `codec` are cached."""
    shards = sorted({ep.shard for ep in store.meta.episodes})
    sizes = ",".join(str((store.path / frames_file(s)).stat().st_size) for s in shards)
    key = f"{codec.fingerprint()}/{sha256_file(store.path / META_FILE)}/{sizes}"
    return store.path / CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


def episode_rows(store: VideoStore) -> np.ndarray:
    """First row of every episode in the latent array: (num_episodes,) int64."""
    return np.concatenate([[0], np.cumsum(store.episode_lengths)[:-1]]).astype(np.int64)


def encode_store(store: VideoStore, codec: Codec, *, cache: bool = True, batch: int = 256,
                 progress: bool = True, device: str | torch.device | None = None) -> np.ndarray:
    """Every frame of `store` encoded by `codec`: float32 (num_frames, C, h, w), episode i at rows
    episode_rows(store)[i] onwards. With `cache` it is read from (or, the first time, written to) cache_path,
    memory-mapped; a data directory that cannot be written to keeps the latents in memory, with a warning.
    device: where a copy of the codec encodes (the training GPU: a CPU-side codec shared by several runs encoded
    ~60 frames/s on the lent H200's host); `codec` itself stays where it is."""
    codec.check_pixel_shape(store.frame_shape, f"the data set {store.path}")
    shape = (store.num_frames, *codec.frame_shape)
    path = cache_path(store, codec) if cache else None
    if path is not None and path.exists():
        try:
            latents = np.load(path, mmap_mode="r")
            if latents.shape == shape and latents.dtype == np.float32:
                return latents
        except (OSError, ValueError):
            pass  # a damaged cache file: encode again and replace it
    latents = np.empty(shape, np.float32)
    rows = episode_rows(store)
    if device is not None and codec.device is not None and codec.device != torch.device(device):
        codec = copy.deepcopy(codec).to(device)
    with tqdm(total=store.num_frames, desc="encode latents", unit="frame", disable=not progress) as bar:
        for e in range(store.num_episodes):
            frames, _ = store.episode(e)
            for start in range(0, len(frames), batch):
                z = codec.encode(frames[start : start + batch]).cpu().numpy()
                latents[rows[e] + start : rows[e] + start + len(z)] = z
                bar.update(len(z))
    if path is None:
        return latents
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, latents)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not cache the latents of {store.path} in {path.parent} ({err}); they stay in memory",
                      stacklevel=2)
        return latents
    return np.load(path, mmap_mode="r")
