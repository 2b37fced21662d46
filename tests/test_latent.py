"""Latent world models end to end: a codec trained with `scd codec train`, a world model trained in its space with
`scd train --codec`, its checkpoint bringing the codec back, and every consumer (generate, eval, quality, probe, play,
the Python API) going through it; pixel models are unchanged."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from scd.checkpoint import load_checkpoint, load_model, save_checkpoint
from scd.cli import main
from scd.codec import AutoencoderCodec, AutoencoderConfig, PixelCodec, load_codec
from scd.codec.latents import cache_path
from scd.config import get_preset
from scd.data import ClipDataset, VideoStore, frames_to_model
from scd.models import build_model
from scd.sampling import generate

from helpers import squares, tiny_diffusers, write_squares

SIZE = 32  # frames; the f4c4 codec makes 8x8x4 latents of them: 64 tokens per frame at patch 1


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("latent")


@pytest.fixture(scope="module")
def data(root):
    return write_squares(root / "squares", episodes=3, length=16, size=SIZE, num_actions=3)


@pytest.fixture(scope="module")
def codec_run(root, data):
    """A codec trained by `scd codec train` for 2 steps, then resumed to 4 (a usable if poor autoencoder)."""
    out = root / "codec"
    args = f"codec train --data {data} --out {out} --preset f4c4 --batch 4 --lpips-weight 0 --ckpt-every 2 " \
           f"--log-every 1 --val-data {data}"
    assert main(f"{args} --steps 2".split()) == 0
    assert main(f"{args} --steps 4".split()) == 0  # resumes at step 2
    return out


@pytest.fixture(scope="module")
def latent_run(root, data, codec_run):
    out = root / "scd-latent"
    args = f"train --preset scd-tiny --codec {codec_run} --data {data} --out {out} --steps 4 --batch 2 --clip-len 4 " \
           f"--warmup 1 --ckpt-every 4 --workers 0"
    assert main(args.split()) == 0
    return out


def test_codec_train_resumes_and_codec_eval_prints_the_scores(codec_run, data, capsys):
    rows = (codec_run / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]  # one row per step: resumed, not redone
    assert sorted(p.name for p in codec_run.glob("ckpt-*")) == ["ckpt-0000002", "ckpt-0000004"]
    assert load_codec(codec_run).checkpoint_info["val"]["psnr"] > 0
    assert main(f"codec eval --data {data} --codec {codec_run} --frames 8 --batch 4 --no-lpips".split()) == 0
    out = capsys.readouterr().out
    assert "autoencoder codec: 32x32x3 frames <-> 4x8x8" in out and "PSNR" in out and "decode" in out
    assert main(f"codec eval --data {data} --frames 4 --no-lpips".split()) == 0  # pixels: exact
    assert "PSNR inf dB" in capsys.readouterr().out


def test_codec_train_continues_a_trained_codec(codec_run, data, root, capsys):
    out = root / "codec-more"
    args = f"codec train --data {data} --out {out} --init-from {codec_run} --batch 4 --lpips-weight 0 --steps 2 " \
           f"--lr 1e-4 --lr-min 1e-5 --ckpt-every 2"
    assert main(args.split()) == 0
    assert f"a codec from {codec_run}" in capsys.readouterr().out
    codec, source = load_codec(out), load_codec(codec_run)
    assert codec.config == source.config and codec.checkpoint_info["init_from"] == source.source
    assert codec.checkpoint_info["train"]["lr_min"] == 1e-5 and codec.checkpoint_info["step"] == 2
    assert main(f"codec train --data {data} --out {root / 'codec-other'} --init-from {codec_run} --preset f8c8 "
                f"--steps 1".split()) == 2
    assert "is a f4c4 codec, not the f8c8 asked for" in capsys.readouterr().err


def test_a_latent_checkpoint_brings_its_codec_back(latent_run, codec_run, data, root):
    codec = load_codec(codec_run)
    model, info = load_checkpoint(latent_run)
    cfg = model.config
    assert cfg.frame_shape == (4, 8, 8) and cfg.patch_size == 1 and cfg.tokens_per_frame == 64
    assert cfg.frame_range is None  # latents are not clamped to [-1, 1]
    record = info["codec"]
    assert record["kind"] == "autoencoder" and record["weights"] == "codec.safetensors"
    assert record["source"]["path"] == str(codec.source["path"]) and record["fingerprint"] == codec.fingerprint()
    assert isinstance(model.codec, AutoencoderCodec) and model.codec.fingerprint() == codec.fingerprint()

    frames = torch.from_numpy(np.array(VideoStore(data).episode(1)[0][:6]))[None]  # uint8 (1, 6, 32, 32, 3)
    assert torch.equal(model.codec.encode(frames), codec.encode(frames))  # the same latents
    actions = torch.from_numpy(np.array(VideoStore(data).episode(1)[1][:6]))[None]
    video = generate(model, frames[:, :3], actions, steps=2, seed=4)  # uint8 context: encoded by model.codec
    assert video.shape == (1, 1, 3, 4, 8, 8)
    assert torch.equal(video, generate(model, codec.encode(frames[:, :3]), actions, steps=2, seed=4))

    # self-contained: without the codec directory the checkpoint still loads and generates the same frames
    moved = root / "codec-moved"
    shutil.move(codec_run, moved)
    try:
        again = load_model(latent_run)
        assert torch.equal(generate(again, frames[:, :3], actions, steps=2, seed=4), video)
        exported = root / "exported"
        assert main(f"export {latent_run} --out {exported}".split()) == 0
        assert load_model(exported).codec.fingerprint() == codec.fingerprint()
        assert json.loads((exported / "config.json").read_text())["codec"]["weights"] == "codec.safetensors"
    finally:
        shutil.move(moved, codec_run)


def test_generate_eval_quality_probe_and_play_run_on_a_latent_model(latent_run, data, tmp_path, capsys):
    assert main(f"generate --checkpoint {latent_run} --data {data} --context 2 --frames 3 --steps 2 "
                f"--out {tmp_path}/v.gif".split()) == 0
    assert "the autoencoder codec decodes a frame in" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert main(f"eval --checkpoint {latent_run} --data {data} --context 2 --horizon 3 --trajectories 2 --steps 1 "
                f"--no-fvd --out {out}".split()) == 0
    report = json.loads((out / "metrics.json").read_text())
    model = report["models"][0]
    assert [m["label"] for m in report["models"]][1:] == ["copy-last-frame", "context-mean"]
    assert 0 < model["summary"]["psnr"]["mean"] < 60 and 0 <= model["summary"]["lpips"]["mean"] <= 1  # on pixels
    assert (out / "contact_sheet.png").exists()
    assert main(f"quality --checkpoint {latent_run} --data {data} --clips 2 --context 2 --frames 2 --steps 1 "
                f"--no-speed".split()) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(f"probe --checkpoint {latent_run} --data {data} --out {tmp_path}/probe --clips 2 --context 2 "
                f"--frames 2 --steps 2 --loss-clips 2 --loss-draws 1".split()) == 0
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["leave_one_out"]["base"]["psnr"] > 0

    from scd.data.context import load_context
    from scd.play.engine import Engine

    model = load_model(latent_run)
    engine = Engine({"scd": model}, load_context(str(data), 4), steps=1, context_frames=2, window=3)
    engine.open_session()
    [frame] = engine.render_next()
    assert frame.pixels.shape == (SIZE, SIZE, 3) and frame.pixels.dtype == np.uint8


def test_latents_are_cached_next_to_the_data_once_per_codec(data, codec_run, monkeypatch):
    codec = load_codec(codec_run)
    store = VideoStore(data)
    path = cache_path(store, codec)
    path.unlink(missing_ok=True)
    cached = ClipDataset(store, 4, codec=codec, encode_device="cpu")  # the training device encodes
    assert path.exists() and path.parent == data / "latents"
    fresh = ClipDataset(store, 4, codec=codec, cache_latents=False)  # each clip encoded when read
    for i in (0, 7, len(cached) - 1):
        torch.testing.assert_close(cached[i][0], fresh[i][0], atol=1e-5, rtol=1e-5)
        assert torch.equal(cached[i][1], fresh[i][1]) and cached[i][0].shape == (4, 4, 8, 8)
    monkeypatch.setattr(type(codec), "encode", lambda *a: pytest.fail("the cache was not used"))
    assert torch.equal(ClipDataset(store, 4, codec=codec)[3][0], cached[3][0])
    other = AutoencoderCodec(codec.config, codec.pixel_shape)  # other weights: another cache file
    assert cache_path(store, other) != path


def test_a_codec_for_other_frames_or_channels_fails_with_a_clear_message(latent_run, codec_run, data, root, capsys):
    big = write_squares(root / "squares64", episodes=1, length=8, size=64, num_actions=3)
    other = AutoencoderCodec(load_codec(codec_run).config, (SIZE, SIZE, 3)).save(root / "other-codec")  # same shapes
    cases = [
        (f"train --preset scd-tiny --codec {codec_run} --data {big} --out {root}/r1 --steps 1",
         "the data has 64x64x3 frames but the autoencoder codec: 32x32x3 frames <-> 4x8x8"),
        (f"eval --checkpoint {latent_run} --data {big} --context 2 --horizon 2 --no-fvd --out {root}/e1",
         "has 64x64x3 frames but the autoencoder codec: 32x32x3"),
        (f"generate --checkpoint {latent_run} --data {big} --context 2 --frames 2 --out {root}/g.gif",
         "has 64x64x3 frames but the autoencoder codec"),
        (f"quality --checkpoint {latent_run} --data {big} --clips 1 --context 2 --frames 2 --no-speed",
         "has 64x64x3 frames but the autoencoder codec"),
        (f"codec eval --data {big} --codec {codec_run} --no-lpips",
         "the data has 64x64x3 frames but the autoencoder codec"),
        (f"train --init-from {latent_run} --data {data} --out {root}/r2 --steps 1 --codec pixel",
         "the model works on frames of shape 4x8x8 (C, h, w) but the pixel codec: 32x32x3 frames <-> 3x32x32"),
        (f"train --init-from {latent_run} --data {data} --out {root}/r3 --steps 1 --codec {other}",
         f"--init-from {latent_run}: it was trained with another codec (autoencoder codec, frames [4, 8, 8])"),
    ]
    for argv, message in cases:
        assert main(argv.split()) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)

    model = build_model(get_preset("scd-tiny").replace(frame_shape=(8, 8, 8), patch_size=1))
    with pytest.raises(ValueError, match="the model works on frames of shape 8x8x8 \\(C, h, w\\) but the autoencoder "
                                         "codec: 32x32x3 frames <-> 4x8x8"):
        model.use_codec(load_codec(codec_run))  # another channel count
    with pytest.raises(ValueError, match="works on 8x8x8 frames and has no codec"):
        model.codec
    ckpt = load_checkpoint(latent_run)[1]["path"]
    weights = root / "tampered"
    shutil.copytree(ckpt, weights)
    blob = (weights / "codec.safetensors").read_bytes()
    (weights / "codec.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="codec.safetensors is corrupt or truncated"):
        load_checkpoint(weights)


def test_pixel_models_are_unchanged(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("scd-tiny"))
    assert isinstance(model.codec, PixelCodec) and model.codec.pixel_shape == (64, 64, 3)
    path = save_checkpoint(tmp_path / "ckpt", model)
    config = json.loads((path / "config.json").read_text())
    assert config["codec"]["kind"] == "pixel" and "codec.safetensors" not in config["files"]
    del config["codec"]  # a checkpoint from before codecs: pixels
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_model(path)
    assert isinstance(loaded.codec, PixelCodec) and loaded.codec.fingerprint() == model.codec.fingerprint()
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64, 3), dtype=np.uint8))
    actions = torch.tensor([[0, 1, 2, 3]])
    assert torch.equal(generate(loaded, frames, actions, steps=2, seed=1),  # uint8 in: the pixel codec's conversion
                       generate(loaded, frames_to_model(frames), actions, steps=2, seed=1))


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers not installed")
def test_a_diffusers_codec_is_referenced_by_its_folder_and_checked_when_the_model_loads(tmp_path):
    import diffusers

    tiny_diffusers("AutoencoderKL", tmp_path / "vae")
    codec = load_codec(tmp_path / "vae", pixel_shape=(16, 16, 3))
    preset = get_preset("scd-tiny").replace(frame_shape=codec.frame_shape, patch_size=1, frame_range=None)
    path = save_checkpoint(tmp_path / "ckpt", build_model(preset).use_codec(codec))
    record = json.loads((path / "config.json").read_text())["codec"]
    assert record["kind"] == "diffusers" and record["path"] == str((tmp_path / "vae").resolve())
    assert "weights" not in record and "codec.safetensors" not in json.loads((path / "config.json").read_text())["files"]
    frames = torch.from_numpy(squares(4))[None]
    assert torch.equal(load_model(path).codec.encode(frames), codec.encode(frames))
    changed = diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae")
    with torch.no_grad():
        next(changed.parameters()).add_(0.1)
    changed.save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="is not the codec the model was trained with"):
        load_model(path)
