"""`scd export` (a lean checkpoint to ship) and `scd convert` (an SCD from a trained Causal DiT): commands that
write a new checkpoint from an existing one, never over it."""

from __future__ import annotations

from pathlib import Path

from . import COMMANDS


# -- scd export ----------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from ..checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {path} ({size / 1e6:.1f} MB: EMA weights and config)")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help=COMMANDS["export"][0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--out", required=True, help="directory of the lean checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint at --out (never the source checkpoint)")
    p.set_defaults(func=cmd_export)


# -- scd convert ---------------------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    from ..convert import convert_checkpoint

    path, conversion = convert_checkpoint(args.checkpoint, Path(args.out), args.encoder_depth, args.decoder_prefix,
                                          args.decoder_suffix, args.encoder_input, args.fusion, args.weights,
                                          args.overwrite)
    encoder, decoder = conversion["encoder_blocks"], conversion["decoder_blocks"]
    print(f"wrote {path}: SCD {len(encoder)}+{len(decoder)} (encoder = blocks {encoder}, decoder = blocks {decoder} "
          f"of the {conversion['source_depth']}-block Causal DiT), encoder_input={conversion['encoder_input']}; "
          f"fine-tune it with scd train --init-from {path}")
    return 0


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help=COMMANDS["convert"][0])
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
