"""Frame codecs: the space a world model's frames live in.

    codec = load_codec("runs/codec")                 # a trained autoencoder (or "pixel", a diffusers folder, a record)
    latents = codec.encode(frames)                   # uint8 (B, F, H, W, 3) -> float (B, F, C, h, w)
    frames = codec.decode(latents)                   # -> uint8 (B, F, H, W, 3)
    codec.to_dict()                                  # what a world-model checkpoint records; load_codec reads it back

- PixelCodec: pixels in [-1, 1], (3, H, W): today's models (bit-identical to scd.data.store.frames_to_model).
- AutoencoderCodec: a small convolutional autoencoder trained on game frames (train_codec, CODEC_PRESETS).
- DiffusersCodec: a diffusers AutoencoderKL / AutoencoderDC from a local folder (optional extra: scd[diffusers]).
- evaluate_codec: reconstruction PSNR / SSIM / LPIPS and encode / decode milliseconds per frame.
"""

from .autoencoder import CODEC_PRESETS, AutoencoderCodec, AutoencoderConfig
from .base import CODEC_FORMAT, Codec, PixelCodec, load_codec
from .diffusers_codec import DiffusersCodec
from .evaluate import evaluate_codec
from .frames import FrameSet
from .train import CodecTrainConfig, CodecTrainer, train_codec

__all__ = ["Codec", "PixelCodec", "AutoencoderCodec", "AutoencoderConfig", "DiffusersCodec", "CODEC_PRESETS",
           "CODEC_FORMAT", "load_codec", "evaluate_codec", "FrameSet", "CodecTrainConfig", "CodecTrainer",
           "train_codec"]
