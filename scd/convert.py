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

from .models import SCD, CausalDiT


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
    decoder_blocks = list(dit.blocks[:decoder_prefix]) + list(dit.blocks[depth - decoder_suffix :])
    with torch.no_grad():
        for half in (scd.encoder, scd.decoder):
            half.embed.load_state_dict(dit.embed.state_dict())
            half.cond.load_state_dict(dit.cond.state_dict())
        for target, source in zip(scd.encoder.blocks, dit.blocks[:encoder_depth]):
            target.load_state_dict(source.state_dict())
        for target, source in zip(scd.decoder.blocks, decoder_blocks):
            target.load_state_dict(source.state_dict())
        scd.decoder.head.load_state_dict(dit.head.state_dict())
    return scd


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="build an SCD from a trained Causal DiT (encoder l, decoder a+b blocks)")
    p.add_argument("--checkpoint", required=True, help="Causal DiT checkpoint or run directory")
    p.add_argument("--out", required=True, help="checkpoint directory to write (use with scd train --init-from)")
    p.add_argument("--encoder-depth", type=int, required=True, metavar="L", help="encoder = the first L blocks")
    p.add_argument("--decoder-prefix", type=int, required=True, metavar="A", help="decoder = the first A blocks ...")
    p.add_argument("--decoder-suffix", type=int, required=True, metavar="B", help="... plus the last B blocks")
    p.add_argument("--encoder-input", choices=["noisy_current", "previous_frame"], default="noisy_current",
                   help="noisy_current: the encoder reads [clean past ; current frame at high noise] as the Causal "
                        "DiT did (supp. E.1); previous_frame: SCD's usual slot layout")
    p.add_argument("--fusion", choices=["seq_offset", "seq_same", "channel"], default="seq_offset")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which source weights to copy")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint at --out (never the source checkpoint)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from .checkpoint import check_output, load_checkpoint, save_checkpoint

    check_output(args.out, args.overwrite, [args.checkpoint])
    dit, info = load_checkpoint(args.checkpoint, weights=args.weights)
    scd = convert_causal_dit(dit, args.encoder_depth, args.decoder_prefix, args.decoder_suffix, args.encoder_input,
                             args.fusion)
    conversion = {"source": info["path"], "source_depth": dit.config.depth,
                  "encoder_blocks": list(range(args.encoder_depth)),
                  "decoder_blocks": list(range(args.decoder_prefix))
                  + list(range(dit.config.depth - args.decoder_suffix, dit.config.depth)),
                  "encoder_input": args.encoder_input, "weights": args.weights}
    path = save_checkpoint(Path(args.out), scd, ema=scd, meta={"step": 0, "data": info.get("data", {}),
                                                               "converted_from": conversion})
    cfg = scd.config
    print(f"wrote {path}: SCD {cfg.encoder_depth}+{cfg.decoder_depth} (encoder = blocks "
          f"{conversion['encoder_blocks']}, decoder = blocks {conversion['decoder_blocks']} of the "
          f"{dit.config.depth}-block Causal DiT), encoder_input={cfg.encoder_input}; fine-tune it with "
          f"scd train --init-from {path}")
    return 0
