"""Writing videos (mp4 through the ffmpeg that imageio-ffmpeg ships, or gif) and laying out comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 frames (..., H, W, 3)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


CONTEXT_COLOUR = (30, 80, 160)  # caption strip under given (real) frames
GENERATED_COLOUR = (150, 40, 40)  # caption strip under generated frames


def label_strip(width: int, text: str, height: int = 14, colour=(24, 24, 24)) -> np.ndarray:
    """A (height, width, 3) uint8 strip with `text` written on it (PIL's built-in font)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(img).text((3, 1), text, fill=(235, 235, 235))
    return np.asarray(img)


def side_by_side(columns: dict[str, np.ndarray], scale: int = 4, gap: int = 4) -> np.ndarray:
    """Videos (T, H, W, 3) uint8 of equal length, labelled and placed left to right -> (T, H', W', 3)."""
    tiles = []
    for name, video in columns.items():
        video = upscale(video, scale)
        strip = np.broadcast_to(label_strip(video.shape[2], name), (video.shape[0], 14, video.shape[2], 3))
        tiles.append(np.concatenate([strip, video], axis=1))
        tiles.append(np.full((video.shape[0], video.shape[1] + 14, gap, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=2)


def with_captions(video: np.ndarray, captions: list[str], colours: list) -> np.ndarray:
    """A caption strip under every frame of video (T, H, W, 3): captions[t] on a strip of colours[t]."""
    if not len(captions) == len(colours) == len(video):
        raise ValueError(f"{len(video)} frames need as many captions and colours, got {len(captions)}, {len(colours)}")
    strips = np.stack([label_strip(video.shape[2], text, colour=colour) for text, colour in zip(captions, colours)])
    return np.concatenate([video, strips], axis=1)


def rollout_video(columns: dict[str, np.ndarray], captions: list[str], given: list[bool], scale: int = 4) -> np.ndarray:
    """Rollouts side by side (columns of uint8 frames (T, H, W, 3)) with a caption strip under every frame:
    blue under the given (context) frames, red under the generated ones."""
    colours = [CONTEXT_COLOUR if g else GENERATED_COLOUR for g in given]
    return with_captions(side_by_side(columns, scale=scale), captions, colours)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Write uint8 frames (T, H, W, 3) to .mp4 (H.264) or .gif, chosen by the file extension."""
    import imageio.v2 as imageio

    path = Path(path)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    elif path.suffix == ".mp4":
        h, w = frames.shape[1:3]  # H.264 with yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        # pixelformat sets ffmpeg's -pix_fmt once (passing it again in ffmpeg_params makes ffmpeg complain)
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                pixelformat="yuv420p") as writer:
            for frame in frames:
                writer.append_data(frame)
    else:
        raise ValueError(f"unsupported video format {path.suffix!r}: use .mp4 or .gif")
    return path


def contact_sheet(blocks: list[tuple[str, dict[str, np.ndarray]]], columns: list[str], scale: int = 2,
                  gap: int = 6, label_width: int = 130) -> np.ndarray:
    """A still comparison of rollouts: blocks [(title, {row label: frames (K, H, W, 3) uint8})], K = len(columns)
    -> one uint8 image (H', W', 3): a header naming the columns (e.g. prediction horizons), then each block's
    rows (e.g. real, model, baseline) with its title above them."""
    from PIL import Image, ImageDraw

    first = next(iter(blocks[0][1].values()))
    h, w = first.shape[1] * scale, first.shape[2] * scale
    width = label_width + len(columns) * (w + 2)
    rows_total = sum(len(rows) for _, rows in blocks)
    height = 16 + len(blocks) * (16 + gap) + rows_total * (h + 2)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(columns):
        draw.text((label_width + k * (w + 2) + 3, 2), name, fill=(0, 0, 0))
    y = 16
    for title, rows in blocks:
        y += gap
        draw.text((3, y + 2), title, fill=(0, 0, 160))
        y += 16
        for label, frames in rows.items():
            if frames.shape[0] != len(columns):
                raise ValueError(f"row {label!r} has {frames.shape[0]} frames for {len(columns)} columns")
            draw.text((3, y + h // 2 - 6), label, fill=(0, 0, 0))
            for k, frame in enumerate(upscale(frames, scale)):
                sheet.paste(Image.fromarray(frame), (label_width + k * (w + 2), y))
            y += h + 2
    return np.asarray(sheet)
