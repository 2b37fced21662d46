"""The one matplotlib set-up: figures are drawn off screen (Agg) and written atomically as PNG files."""

from __future__ import annotations

from pathlib import Path

from .fileio import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """Write `fig` to `path` as a PNG (readers never see half a file) and close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
