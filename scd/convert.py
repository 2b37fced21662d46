"""Build an SCD from a trained Causal DiT (supp. E.1, "layer decomposition"), then fine-tune it with `scd train
--init-from`.

    scd convert --checkpoint runs/dit --out runs/scd-from-dit/converted --encoder-depth 4 \\
        --decoder-prefix 1 --decoder-suffix 1 [--encoder-input noisy_current]

From a Causal DiT of L blocks: the encoder is its first l blocks, the decoder its first a and last b blocks
(the paper: 25 and 5 + 5 of 30; leave-one-out probing showed the first and last blocks matter most). Both halves
get copies of the patch embedding and the (t, action) conditioning; the decoder gets the final layer. The new SCD
config has encoder_depth = l and decoder_depth = a + b. Its encoder's learned start token (previous_frame mode)
and a channel-fusion Linear have no counterpart and keep their initial values.

encoder_input="noisy_current" (the default here, the paper's input reparameterisation) makes the encoder read
the Causal DiT's own teacher-forcing layout, [clean past ; current frame at high noise], so the copied blocks see
exactly the inputs they were trained on: at inference c_i is the normalised output of block l of the Causal DiT's
first denoising step (t = 1). `scd train --encoder-t-min` sets the fine-tuning noise range t ~ U(t_min, 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import check_output, load_checkpoint, model_codec, save_checkpoint
from .models import SCD, CausalDiT


def decoder_blocks(depth: int, prefix: int, suffix: int) -> list[int]:
    """Indices of the source blocks that make the decoder: the first `prefix` and the last `suffix` of `depth`."""
    return list(range(prefix)) + list(range(depth - suffix, depth))


def convert_causal_dit(dit: CausalDiT, encoder_depth: int, decoder_prefix: int, decoder_suffix: int,
                       encoder_input: str = "noisy_current", fusion: str = "seq_offset") -> SCD:
    """An SCD whose encoder is the first `encoder_depth` blocks of `dit` and whose decoder is its first
    `decoder_prefix` plus last `decoder_suffix` blocks, with the embeddings and final layer copied."""
    if not isinstance(dit, CausalDiT):
        raise ValueError(f"scd convert needs a Causal DiT checkpoint, got {type(dit).__name__}")
    depth = dit.config.depth
    if not 1 <= encoder_depth <= depth:
        raise ValueError(f"--encoder-depth must be in [1, {depth}] for a {depth}-block Causal DiT, got {encoder_depth}")
    if decoder_prefix < 0 or decoder_suffix < 0 or decoder_prefix + decoder_suffix < 1:
        raise ValueError(f"the decoder needs at least one block: prefix {decoder_prefix} + suffix {decoder_suffix}")
    if decoder_prefix > depth or decoder_suffix > depth:
        raise ValueError(f"decoder prefix {decoder_prefix} / suffix {decoder_suffix} exceed the {depth} source blocks")
    config = dit.config.replace(arch="scd", depth=0, encoder_depth=encoder_depth, fusion=fusion,
                                decoder_depth=decoder_prefix + decoder_suffix, encoder_input=encoder_input)
    scd = SCD(config).to(dit.device)
    codec = model_codec(dit)
    if codec is not None:  # the same frames: the same codec
        scd.use_codec(codec)
    with torch.no_grad():
        for half in (scd.encoder, scd.decoder):
            half.embed.load_state_dict(dit.embed.state_dict())
            half.cond.load_state_dict(dit.cond.state_dict())
        for target, source in zip(scd.encoder.blocks, dit.blocks[:encoder_depth]):
            target.load_state_dict(source.state_dict())
        for target, i in zip(scd.decoder.blocks, decoder_blocks(depth, decoder_prefix, decoder_suffix)):
            target.load_state_dict(dit.blocks[i].state_dict())
        scd.decoder.head.load_state_dict(dit.head.state_dict())
    return scd


def convert_checkpoint(checkpoint, out, encoder_depth: int, decoder_prefix: int, decoder_suffix: int,
                       encoder_input: str = "noisy_current", fusion: str = "seq_offset", weights: str = "ema",
                       overwrite: bool = False) -> tuple[Path, dict]:
    """`convert_causal_dit` on a Causal DiT checkpoint (its `weights`, "ema" or "model"), written to `out` as a
    step-0 checkpoint to fine-tune with the source's data description. Returns its path and what was converted
    (source, block indices, encoder input), also stored in its config.json as "converted_from"."""
    check_output(out, overwrite, [checkpoint])
    dit, info = load_checkpoint(checkpoint, weights=weights)
    scd = convert_causal_dit(dit, encoder_depth, decoder_prefix, decoder_suffix, encoder_input, fusion)
    depth = dit.config.depth
    conversion = {"source": info["path"], "source_depth": depth, "encoder_blocks": list(range(encoder_depth)),
                  "decoder_blocks": decoder_blocks(depth, decoder_prefix, decoder_suffix),
                  "encoder_input": encoder_input, "weights": weights}
    path = save_checkpoint(Path(out), scd, ema=scd, meta={"step": 0, "data": info.get("data", {}),
                                                          "converted_from": conversion})
    return path, conversion
