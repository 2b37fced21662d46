"""Helpers shared by the tests (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import contextlib
import os
import signal

import numpy as np
import torch

from scd.data import DatasetWriter


@contextlib.contextmanager
def terminate_after_step(monkeypatch, trainer_class, step: int):
    """Send this process SIGTERM (as a scheduler preempting the job would) right after `trainer_class.train_step`
    finishes step `step`. Yields the list of SIGTERMs that reached the handler outside the run: the default one
    would end pytest, so a stand-in counts them instead."""
    real_step = trainer_class.train_step

    def step_then_terminate(self, *args):
        out = real_step(self, *args)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    unhandled = []
    outside = signal.signal(signal.SIGTERM, lambda *_: unhandled.append(1))
    monkeypatch.setattr(trainer_class, "train_step", step_then_terminate)
    try:
        yield unhandled
    finally:
        monkeypatch.setattr(trainer_class, "train_step", real_step)
        signal.signal(signal.SIGTERM, outside)


def perturb(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Add Gaussian noise to every weight. adaLN-Zero starts every residual branch and the output at zero, so an
    untrained model ignores its inputs; perturbed, its outputs depend on everything and the tests can fail."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


def squares(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 frames (n, size, size, 3): a coloured square moving over a coloured background."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, size, size, 3), np.uint8)
    frames[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    colour, (r, c) = rng.integers(0, 256, 3), rng.integers(0, size // 2, 2)
    for i in range(n):
        frames[i, r : r + size // 4, (c + i) % (size - size // 4) :][:, : size // 4] = colour
    return frames


def write_squares(path, episodes=3, length=12, size=16, seed=0, num_actions=1):
    """A data set of `squares` episodes; with num_actions > 1 the actions are random (the first one a no-op)."""
    writer = DatasetWriter(path, (size, size, 3))
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        actions = rng.integers(0, num_actions, length)
        actions[0] = 0
        writer.add_episode(squares(length, size, seed + e), actions.astype(np.int64), seed=e)
    names = ["noop"] + [f"action_{i}" for i in range(1, num_actions)]
    writer.finish(source="squares", num_actions=num_actions, action_names=names, fps=10)
    return path


def tiny_diffusers(kind, folder):
    """A tiny random diffusers AutoencoderKL or AutoencoderDC (16x16 frames -> 4x8x8) saved in `folder`."""
    import diffusers

    torch.manual_seed(0)
    if kind == "AutoencoderKL":
        model = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                                        norm_num_groups=4, sample_size=16, shift_factor=0.1)
    else:
        model = diffusers.AutoencoderDC(latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock",
                                        decoder_block_types="ResBlock", encoder_block_out_channels=(8, 16),
                                        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1),
                                        decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
                                        decoder_qkv_multiscales=((), ()), decoder_norm_types="rms_norm",
                                        decoder_act_fns="silu", scaling_factor=0.5)
    model.save_pretrained(folder)
    return model.eval()
