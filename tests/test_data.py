"""Tests for scd.data: on-disk format, recording (Crafter, Atari), importers, clip dataset, CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from scd.cli import main
from scd.data import (
    BENCHMARKS,
    ClipDataset,
    DatasetWriter,
    VideoStore,
    episode_seed,
    frames_to_model,
    frames_to_uint8,
    import_teco,
    import_ucf101,
    record_benchmark,
    resize_area,
)
from scd.data import record as record_module
from scd.data.record import record

STEPS = 40


def dataset_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def crafter_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crafter") / "ds"
    record("crafter", out, episodes=2, steps=STEPS, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def atari_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("atari") / "ds"
    record("atari:Breakout", out, episodes=2, steps=STEPS, seed=0, progress=False)
    return out


def write_synthetic(out: Path, lengths=(5, 9, 3), shape=(8, 8, 3), num_actions=4, shard_bytes=1 << 26) -> list:
    """A small dataset of random frames; returns [(frames, actions)] per episode as written."""
    rng = np.random.default_rng(0)
    writer = DatasetWriter(out, shape, shard_bytes=shard_bytes)
    episodes = []
    for i, n in enumerate(lengths):
        frames = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        actions = rng.integers(0, num_actions, n)
        actions[0] = 0
        writer.add_episode(frames, actions, seed=i)
        episodes.append((frames, actions))
    writer.finish(source="synthetic", num_actions=num_actions, action_names=[f"a{k}" for k in range(num_actions)], fps=10)
    return episodes


# ------------------------------------------------------------------------------------------
# Recording


def test_record_crafter_format(crafter_dir):
    meta = json.loads((crafter_dir / "meta.json").read_text())
    assert meta["format"] == "scd-video-v1" and meta["source"] == "crafter"
    assert meta["frame_shape"] == [64, 64, 3] and meta["num_actions"] == 17
    assert meta["action_names"][:2] == ["noop", "move_left"] and len(meta["action_names"]) == 17
    assert [ep["seed"] for ep in meta["episodes"]] == [episode_seed(0, 0), episode_seed(0, 1)]
    assert meta["recorder"]["policy"]["name"] == "crafter-explorer"
    store = VideoStore(crafter_dir)
    assert store.num_episodes == 2 and store.frame_shape == (64, 64, 3)
    for i in range(2):
        frames, actions = store.episode(i)
        assert frames.dtype == np.uint8 and frames.shape == (STEPS, 64, 64, 3)
        assert actions.dtype == np.int64 and actions.shape == (STEPS,)
        assert actions[0] == 0  # reset frame: no-op
        assert actions.min() >= 0 and actions.max() < 17


def test_crafter_explorer_makes_the_view_change(crafter_dir):
    store = VideoStore(crafter_dir)
    for i in range(store.num_episodes):
        frames, actions = store.episode(i)
        diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()
        assert diff > 3.0, f"episode {i}: frames barely change (mean abs diff {diff:.2f})"
        assert len(set(actions[1:].tolist())) >= 3
        moves = np.isin(actions[1:], [1, 2, 3, 4]).mean()
        assert 0.3 < moves < 0.95  # mostly walking, with other actions mixed in


def test_record_is_deterministic(crafter_dir, tmp_path):
    again = tmp_path / "again"
    record("crafter", again, episodes=2, steps=STEPS, seed=0, progress=False)
    assert dataset_bytes(again) == dataset_bytes(crafter_dir)


def test_record_with_workers_is_the_same_dataset(crafter_dir, tmp_path):
    parallel = tmp_path / "parallel"
    record("crafter", parallel, episodes=2, steps=STEPS, seed=0, progress=False, workers=2)
    assert dataset_bytes(parallel) == dataset_bytes(crafter_dir)


def test_record_full_length_with_workers_keeps_the_serial_seeds(tmp_path):
    serial = record("atari:Breakout", tmp_path / "a", episodes=2, steps=230, seed=0, progress=False, full_length=True)
    parallel = record("atari:Breakout", tmp_path / "b", episodes=2, steps=230, seed=0, progress=False,
                      full_length=True, workers=3)
    assert [ep.seed for ep in parallel.episodes] == [ep.seed for ep in serial.episodes]
    assert dataset_bytes(tmp_path / "a") == dataset_bytes(tmp_path / "b")


def test_record_atari(atari_dir, tmp_path):
    store = VideoStore(atari_dir)
    assert store.meta.source == "atari:Breakout" and store.action_names == ("NOOP", "FIRE", "RIGHT", "LEFT")
    assert store.frame_shape == (64, 64, 3) and store.meta.fps == 15
    for i in range(2):
        frames, actions = store.episode(i)
        assert frames.shape == (STEPS, 64, 64, 3) and actions[0] == 0 and actions.max() < 4
        assert len(set(actions.tolist())) >= 2
        assert np.any(frames[1:] != frames[:-1])  # the paddle/ball move
    again = tmp_path / "again"
    record("atari:Breakout", again, episodes=2, steps=STEPS, seed=0, progress=False)
    assert dataset_bytes(again) == dataset_bytes(atari_dir)
    other = tmp_path / "other"
    record("atari:Breakout", other, episodes=2, steps=STEPS, seed=1, progress=False)
    assert not np.array_equal(VideoStore(other).episode(0)[1], store.episode(0)[1])


def test_record_full_length_drops_short_episodes(tmp_path, monkeypatch):
    # Random Breakout loses its 5 lives after about 220 frames: some candidates end short and are dropped.
    meta = record("atari:Breakout", tmp_path / "a", episodes=2, steps=230, seed=0, progress=False, full_length=True)
    assert all(ep.length == 230 for ep in meta.episodes)
    dropped = meta.recorder["discarded_episodes"]
    assert dropped >= 1 and meta.episodes[-1].seed == episode_seed(0, 2 + dropped - 1)
    monkeypatch.setattr(record_module, "MAX_TRIES_PER_EPISODE", 2)
    with pytest.raises(ValueError, match="lasted 3000 frames"):  # random Breakout loses all lives sooner
        record("atari:Breakout", tmp_path / "b", episodes=1, steps=3000, seed=0, progress=False, full_length=True)


def test_record_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        record("minigrid", tmp_path / "x", episodes=1, steps=5, seed=0, progress=False)
    with pytest.raises(ValueError, match="unknown Atari game"):
        record("atari:NoSuchGame", tmp_path / "x", episodes=1, steps=5, seed=0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        record("crafter", tmp_path / "x", episodes=1, steps=0, seed=0, progress=False)
    with pytest.raises(ValueError, match="workers"):
        record("crafter", tmp_path / "x", episodes=1, steps=5, seed=0, progress=False, workers=0)
    with pytest.raises(ValueError, match="unknown benchmark"):
        record_benchmark("nope", tmp_path / "x")


def test_benchmark_split(tmp_path, monkeypatch):
    spec = BENCHMARKS["crafter-bench"]
    assert spec["source"] == "crafter" and spec["episodes"] == 16 and spec["steps"] == 300
    bench_seeds = {episode_seed(spec["seed"], j) for j in range(spec["episodes"] * record_module.MAX_TRIES_PER_EPISODE)}
    train_seeds = {episode_seed(s, i) for s in range(100) for i in range(1000)}
    assert not bench_seeds & train_seeds
    val = BENCHMARKS["crafter-val"]  # the split for choosing settings: disjoint from both
    val_seeds = {episode_seed(val["seed"], j) for j in range(val["episodes"] * record_module.MAX_TRIES_PER_EPISODE)}
    assert not val_seeds & (bench_seeds | train_seeds)
    # The benchmark machinery, on a tiny stand-in split (the real one takes about a minute).
    monkeypatch.setitem(BENCHMARKS, "tiny", dict(source="atari:Pong", episodes=1, steps=8, seed=1_000_000, size=32))
    meta = record_benchmark("tiny", tmp_path / "b", progress=False)
    assert meta.recorder["benchmark"] == "tiny" and meta.episodes[0].seed == episode_seed(1_000_000, 0)


# ------------------------------------------------------------------------------------------
# Store, clips, conversions


def test_writer_shards_and_roundtrip(tmp_path):
    written = write_synthetic(tmp_path / "ds", lengths=(5, 9, 3, 4), shard_bytes=8 * 8 * 3 * 10)
    store = VideoStore(tmp_path / "ds")
    assert sorted({ep.shard for ep in store.meta.episodes}) == [0, 1, 2]
    assert len(list((tmp_path / "ds").glob("frames_*.npy"))) == 3
    for i, (frames, actions) in enumerate(written):
        got_frames, got_actions = store.episode(i)
        np.testing.assert_array_equal(got_frames, frames)
        np.testing.assert_array_equal(got_actions, actions)
    assert store.action_counts().sum() == sum(len(a) for _, a in written)


def test_episodes_are_memory_mapped(crafter_dir):
    frames, actions = VideoStore(crafter_dir).episode(0)
    assert isinstance(frames, np.memmap) and isinstance(actions, np.memmap)
    assert not frames.flags.writeable


def test_clip_dataset(tmp_path):
    written = write_synthetic(tmp_path / "ds", lengths=(5, 9, 3))
    ds = ClipDataset(tmp_path / "ds", clip_len=4)
    assert len(ds) == (5 - 4 + 1) + (9 - 4 + 1)  # the 3-frame episode is skipped
    assert ds.frame_shape == (3, 8, 8) and ds.num_actions == 4 and ds.action_names == ("a0", "a1", "a2", "a3")
    frames, actions = ds[len(ds) - 1]  # last window of episode 1
    assert frames.shape == (4, 3, 8, 8) and frames.dtype == torch.float32
    assert actions.shape == (4,) and actions.dtype == torch.int64
    assert frames.min() >= -1 and frames.max() <= 1
    np.testing.assert_array_equal(frames_to_uint8(frames), written[1][0][5:9])
    np.testing.assert_array_equal(actions.numpy(), written[1][1][5:9])
    assert ds.clip_location(2) == (1, 0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 4, 3, 8, 8) and batch[1].shape == (3, 4)
    blob = pickle.dumps(ds)  # DataLoader workers under spawn: the store travels by path, not by value
    assert len(blob) < 4096 and torch.equal(pickle.loads(blob)[3][0], ds[3][0])
    only = ClipDataset(VideoStore(tmp_path / "ds"), clip_len=2, episodes=[2], stride=2)
    assert len(only) == 1 and only.clip_location(0) == (2, 0)


def test_clip_dataset_on_recording(crafter_dir):
    ds = ClipDataset(crafter_dir, clip_len=16)
    assert len(ds) == 2 * (STEPS - 16 + 1) and ds.frame_shape == (3, 64, 64) and ds.num_actions == 17
    frames, actions = ds[0]
    assert frames.shape == (16, 3, 64, 64) and actions[0] == 0


def test_frame_conversions():
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    model = frames_to_model(pixels)
    assert model.shape == (1, 3, 16, 16) and model.dtype == torch.float32
    assert model.min() == -1 and model.max() == 1
    np.testing.assert_array_equal(frames_to_uint8(model), pixels)
    np.testing.assert_array_equal(frames_to_uint8(torch.full((3, 2, 2), 5.0)), np.full((2, 2, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        frames_to_model(pixels.astype(np.float32))
    flat = np.full((210, 160, 3), 77, np.uint8)
    assert (resize_area(flat, 64) == 77).all() and resize_area(flat, 64).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------
# Errors


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoStore(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        VideoStore(tmp_path / "empty")


def test_corrupt_meta(tmp_path):
    write_synthetic(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "meta.json"
    good = meta_path.read_text()
    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="meta.json: corrupt JSON"):
        VideoStore(tmp_path / "ds")
    meta_path.write_text(good.replace('"num_actions": 4', '"num_actions": 2'))
    with pytest.raises(ValueError, match="action_names"):
        VideoStore(tmp_path / "ds")


def test_missing_and_truncated_shards(tmp_path):
    write_synthetic(tmp_path / "ds")
    shard = tmp_path / "ds" / "frames_00000.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 500])
    with pytest.raises(ValueError, match="frames_00000.npy.*truncated"):
        VideoStore(tmp_path / "ds")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="frames_00000.npy"):
        VideoStore(tmp_path / "ds")
    # A shard with fewer rows than meta.json promises (consistent .npy header).
    shard.write_bytes(data)
    actions = tmp_path / "ds" / "actions_00000.npy"
    np.save(actions, np.load(actions)[:-2])
    with pytest.raises(ValueError, match="actions_00000.npy: holds 15 actions"):
        VideoStore(tmp_path / "ds")


def test_clip_len_longer_than_every_episode(tmp_path):
    write_synthetic(tmp_path / "ds", lengths=(5, 9, 3))
    with pytest.raises(ValueError, match="longer than every selected episode.*longest has 9"):
        ClipDataset(tmp_path / "ds", clip_len=10)


def test_writer_refuses_to_clobber(tmp_path):
    write_synthetic(tmp_path / "ds")
    with pytest.raises(ValueError, match="already holds a dataset"):
        write_synthetic(tmp_path / "ds")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        DatasetWriter(tmp_path / "other", (8, 8, 3), overwrite=True)
    writer = DatasetWriter(tmp_path / "ds", (8, 8, 3), overwrite=True)
    assert not any((tmp_path / "ds").iterdir())
    with pytest.raises(ValueError, match="uint8"):
        writer.add_episode(np.zeros((3, 8, 8, 3), np.float32), np.zeros(3, np.int64), seed=0)


# ------------------------------------------------------------------------------------------
# Importers


def test_import_teco(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "teco"
    src.mkdir()
    episodes = []
    for i in range(3):
        video = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
        actions = rng.integers(0, 3, 12).astype(np.int32)
        actions[0] = 2
        np.savez(src / f"{i:04d}.npz", video=video, actions=actions)
        episodes.append((video, actions))
    meta = import_teco(src, tmp_path / "out")
    assert meta.source == "teco" and meta.num_actions == 3 and meta.frame_shape == (16, 16, 3)
    store = VideoStore(tmp_path / "out")
    assert [ep.name for ep in store.meta.episodes] == ["0000.npz", "0001.npz", "0002.npz"]
    for i, (video, actions) in enumerate(episodes):
        frames, got = store.episode(i)
        np.testing.assert_array_equal(frames, video)
        assert got[0] == 0  # reset frame: no-op
        np.testing.assert_array_equal(got[1:], actions[1:])
    assert import_teco(src, tmp_path / "out4", num_actions=4).num_actions == 4
    np.savez(src / "9999.npz", video=np.zeros((12, 16, 16, 3), np.float32), actions=np.zeros(12, np.int64))
    with pytest.raises(ValueError, match="9999.npz: 'video' must be uint8"):
        import_teco(src, tmp_path / "bad")
    np.savez(src / "9999.npz", frames=np.zeros((12, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="9999.npz: missing array"):
        import_teco(src, tmp_path / "bad", overwrite=True)
    with pytest.raises(FileNotFoundError, match="no .npz"):
        import_teco(tmp_path / "out", tmp_path / "bad2")


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_import_ucf101(tmp_path):
    src = tmp_path / "ucf" / "ApplyEyeMakeup"
    src.mkdir(parents=True)
    n = 10
    frames = np.zeros((n, 48, 64, 3), np.uint8)
    frames[..., 2] = 200  # blue side bars, cropped away
    frames[:, :, 8:56] = (200, 40, 40)  # red centre square (48 x 48)
    frames[:, :, 8:56, 1] = np.linspace(0, 200, n).astype(np.uint8)[:, None, None]  # green ramps over time
    write_avi(src / "v_a.avi", frames)
    write_avi(src / "v_b.avi", frames[:6])
    meta = import_ucf101(tmp_path / "ucf", tmp_path / "out", size=16)
    assert meta.source == "ucf101" and meta.num_actions == 1 and meta.fps == 25
    store = VideoStore(tmp_path / "out")
    assert store.episode_lengths.tolist() == [n, 6]
    got, actions = store.episode(0)
    assert got.shape == (n, 16, 16, 3) and not actions.any()
    mean = got.astype(float).mean(axis=(1, 2))  # (n, 3)
    assert np.all(np.abs(mean[:, 0] - 200) < 20) and np.all(mean[:, 2] < 70)  # only the red square (blue 40) is left
    assert mean[-1, 1] - mean[0, 1] > 150  # and the green ramp survived
    single = import_ucf101(src / "v_b.avi", tmp_path / "one", size=8, max_frames=3)
    assert single.episodes[0].length == 3 and single.frame_shape == (8, 8, 3)
    (tmp_path / "junk.avi").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.avi: cannot decode"):
        import_ucf101(tmp_path / "junk.avi", tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        import_ucf101([tmp_path / "missing.avi"], tmp_path / "bad2")


# ------------------------------------------------------------------------------------------
# CLI


def test_cli(tmp_path, capsys):
    out = tmp_path / "pong"
    assert main(["data", "record", "--source", "atari:Pong", "--out", str(out), "--episodes", "1",
                 "--steps", "6", "--size", "32", "--quiet"]) == 0
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "episodes    1" in printed and "NOOP" in printed and "32x32" in printed
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scd data: error:") and "nowhere" in err and "\n" not in err
    assert main(["data", "record", "--source", "atari:Pong", "--out", str(out), "--episodes", "1",
                 "--steps", "6", "--quiet"]) == 2  # refuses to overwrite without --overwrite
    np.savez(tmp_path / "e.npz", video=np.zeros((4, 8, 8, 3), np.uint8), actions=np.arange(4))
    assert main(["data", "import-teco", str(tmp_path), "--out", str(tmp_path / "t")]) == 0
    assert VideoStore(tmp_path / "t").num_actions == 4
