"""Self-describing checkpoints, written atomically.

A checkpoint is a directory:
    config.json        format, model config, training config, step, data description, sha256 of every file
    model.safetensors  raw weights
    ema.safetensors    EMA weights (what generation uses by default)
    trainer.pt         optimizer, LR schedule and RNG states (only what exact resumption needs)
    codec.safetensors  the weights of the model's frame codec when it is a trained autoencoder (config.json "codec"
                       records every codec: see codec_record; none recorded = pixels)
It is written under a temporary name and renamed into place, so a crash never leaves a half-written checkpoint;
a failed write (a full disk) removes its temporary folder. A run directory holds ckpt-<step> directories and a
`latest` file naming the newest one (for people: resumption takes the newest complete checkpoint, since a kill
between the checkpoint's rename and the pointer's leaves the pointer one behind).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import SHIPPED_MODELS, ModelConfig
from .fileio import sha256_file
from .models import WorldModel, build_model

FORMAT = "scd-checkpoint-v1"
LATEST = "latest"
CODEC_WEIGHTS = "codec.safetensors"  # a trained autoencoder codec, stored with the model


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _state_dict(model: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = model if isinstance(model, dict) else model.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: WorldModel,
    *,
    ema: WorldModel | dict[str, torch.Tensor] | None = None,
    trainer_state: dict | None = None,
    meta: dict | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically (an existing one is replaced). Returns the path.
    `weights`, `ema` as a dict: full state dicts gathered from a model that holds only a shard (FSDP2); `model`
    then only gives the config."""
    files = {"model.safetensors": model if weights is None else weights}
    if ema is not None:
        files["ema.safetensors"] = ema
    config = {"format": FORMAT, "model": model.config.to_dict()}
    codec = model_codec(model)
    if codec is not None:
        config["codec"], stored = codec_record(codec)
        if stored:
            files[CODEC_WEIGHTS] = codec
    return write_checkpoint(path, {**config, **(meta or {})}, files, trainer_state)


def model_codec(model: WorldModel):
    """The codec of `model` (WorldModel.codec), or None for a model of non-RGB frames that has none."""
    try:
        return model.codec
    except ValueError:
        return None


def codec_record(codec) -> tuple[dict, bool]:
    """What a checkpoint's config.json records of its model's codec ("codec"), and whether the codec's weights are
    stored in the checkpoint (CODEC_WEIGHTS): a trained autoencoder travels with the model, so a checkpoint stays
    self-contained ("source": the codec directory it came from); a diffusers autoencoder is referenced by its
    folder. "fingerprint" (Codec.fingerprint) lets loading check that a referenced codec is still the same."""
    record = {**codec.to_dict(), "fingerprint": codec.fingerprint()}
    stored = bool(getattr(codec, "stored_in_checkpoints", False))
    if stored:
        source = {k: record.pop(k) for k in ("path", "sha256") if k in record}
        record.update(weights=CODEC_WEIGHTS, **({"source": source} if source else {}))
    return record, stored


def load_model_codec(config: dict, device: str | torch.device = "cpu"):
    """The codec a checkpoint's config.json (read_config) records, on `device`; None when it records none (a
    checkpoint from before codecs: its model works on pixels)."""
    record = config.get("codec")
    if record is None:
        return None
    from .codec import AutoencoderCodec, load_codec

    where = f"checkpoint {config['path']}: the codec in config.json"
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object, got {record!r}")
    if record.get("weights") is not None:
        _, state = load_weights(config["path"], str(record["weights"]))
        codec = AutoencoderCodec.from_record(record, state, where, record["weights"])
    else:
        try:
            codec = load_codec(record, root=config["path"])
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{where} cannot be loaded: {err}") from None
    fingerprint = record.get("fingerprint")
    if fingerprint is not None and codec.fingerprint() != fingerprint:
        raise ValueError(f"{where} is not the codec the model was trained with: {codec.describe()} from "
                         f"{record.get('path') or record.get('weights')} computes other latents (fingerprint differs)")
    return codec.to(device).eval()


def write_checkpoint(path: str | os.PathLike, config: dict,
                     files: dict[str, torch.nn.Module | dict[str, torch.Tensor]], trainer_state: dict | None = None) -> Path:
    """Write a directory atomically: each of `files` (name -> module or state dict) as safetensors, `trainer_state` as
    trainer.pt, and `config` as config.json with the sha256 of every file added. An existing one is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, tensors in files.items():
            save_file(_state_dict(tensors), tmp / name)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
        config = {**config, "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except Exception as err:  # a full disk: OSError from safetensors, RuntimeError ("unexpected pos") from torch.save
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing checkpoint {path} failed ({_first_line(err)})") from err
    if path.exists():  # replace: move the old one aside first, so one complete copy exists at every moment
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Clean up after writers that were killed or failed: delete the temporary folders of unfinished checkpoints
    and files (.<name>.tmp*), and put back a checkpoint that was moved aside for a replacement that never arrived
    (.<name>.old-<pid> with no <name>). Returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for p in sorted(run_dir.glob(".*.old-*")):
        target = run_dir / p.name[1 : p.name.rindex(".old-")]
        if not target.exists() and (p / "config.json").exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in sorted(run_dir.glob(".*.tmp*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def check_output(out: str | os.PathLike, overwrite: bool, sources: list[str | os.PathLike] = (),
                 option: str = "--out") -> Path:
    """Refuse to write a checkpoint over an existing `out` unless `overwrite`, and never over (or around) one of
    `sources`. With `overwrite`, only a checkpoint directory or an empty directory may be replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a directory")
    target = out.resolve()
    for source in sources:
        try:
            src = resolve_checkpoint(source).resolve()
        except (FileNotFoundError, ValueError):
            continue
        if target == src or target in src.parents:
            raise ValueError(f"{option} {out} would replace the source checkpoint {src}: write somewhere else")
    if out.exists():
        if not overwrite:
            raise ValueError(f"{option} {out} exists: pass --overwrite to replace it")
        if any(out.iterdir()) and not (out / "config.json").exists():
            raise ValueError(f"{option} {out} is a non-empty directory but not a checkpoint: not replacing it")
    return out


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, a run directory (its `latest` checkpoint) or a shipped model's name (SHIPPED_MODELS)."""
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        path = SHIPPED_MODELS[str(path)]
    path = Path(path)
    if not path.exists():
        names = ", ".join(SHIPPED_MODELS)
        raise FileNotFoundError(f"checkpoint not found: {path} (give a checkpoint or run directory, or one of {names})")
    if (path / "config.json").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint (no config.json) nor a run directory with checkpoints")
    return latest


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (highest ckpt-<step> with a config.json) of a run directory; None if there is
    none. The `latest` pointer is not trusted: a kill between renaming a checkpoint into place and updating the
    pointer leaves it naming the one before."""
    found = sorted(p for p in Path(run_dir).glob("ckpt-*") if (p / "config.json").exists())
    return found[-1] if found else None


def check_resumable(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run in `run_dir` resumes from (latest_checkpoint), after checking that no newer checkpoint
    folder lost its config.json: resuming from an older one (or from scratch) would later overwrite it."""
    run_dir = Path(run_dir)
    chosen = latest_checkpoint(run_dir)
    damaged = [p for p in sorted(run_dir.glob("ckpt-*")) if p.is_dir() and not (p / "config.json").exists()
               and (chosen is None or p.name > chosen.name)]
    if damaged:
        raise ValueError(f"run directory {run_dir}: checkpoint {damaged[-1].name} has no config.json (damaged); move "
                         f"it out of the run directory to resume from "
                         f"{chosen.name if chosen else 'scratch'}, or train into a new --out")
    return chosen


def read_config(path: str | os.PathLike, format: str = FORMAT) -> dict:
    """The checkpoint's config.json, validated (`format`: scd.codec's checkpoints use their own)."""
    path = resolve_checkpoint(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint {path}: config.json is corrupt ({err})") from None
    if not isinstance(config, dict) or config.get("format") != format:
        raise ValueError(f"checkpoint {path}: config.json is not an {format} checkpoint")
    config["path"] = str(path)
    return config


def _verified(path: Path, name: str, config: dict) -> Path:
    file = path / name
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {path} is missing {name}")
    expected = config.get("files", {}).get(name) if isinstance(config.get("files"), dict) else None
    if expected is None:  # a config.json without the list would skip verification: refuse instead
        raise ValueError(f"checkpoint {path}: config.json lists no sha256 for {name}, so it cannot be verified")
    if sha256_file(file) != expected:
        raise ValueError(f"checkpoint file {file} is corrupt or truncated (sha256 does not match config.json)")
    return file


def load_weights(path: str | os.PathLike, name: str = "ema.safetensors",
                 format: str = FORMAT) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of one weights file of a checkpoint, after checking its sha256."""
    config = read_config(path, format)
    ckpt = Path(config["path"])
    file = _verified(ckpt, name, config)
    try:
        return config, load_file(file)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"checkpoint file {file} is corrupt or truncated: {err}") from None


def load_checkpoint(path: str | os.PathLike, weights: str = "ema",
                    device: str | torch.device = "cpu") -> tuple[WorldModel, dict]:
    """The model a checkpoint describes, with its weights ("ema" if present, else "model"), in eval mode on
    `device` with its codec (`model.codec`: the one it was trained with, on `device`; a checkpoint that records
    none works on pixels), and the checkpoint's info: its config.json without the file list (model and training
    config, step, data description, codec record, ...) and the `path` it was read from.

    path: a checkpoint or run directory, or a shipped model's name: "crafter-scd", "crafter-dit"."""
    config = read_config(path)
    _, state = load_weights(path, weights_file(config, weights))
    model = build_model(ModelConfig.from_dict(config["model"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {config['path']} does not fit its config: missing {missing}, unexpected {unexpected}")
    codec = load_model_codec(config, device)
    if codec is not None:
        try:
            model.use_codec(codec)
        except ValueError as err:
            raise ValueError(f"checkpoint {config['path']}: {err}") from None
    info = {k: v for k, v in config.items() if k != "files"}
    return model.to(device).eval(), info


def weights_file(config: dict, weights: str = "ema") -> str:
    """The file of a checkpoint with `config` that holds its `weights` ("ema" or "model"): a lean export has only
    model.safetensors, which then stands for the EMA."""
    if weights == "ema" and "ema.safetensors" not in config.get("files", {}):
        return "model.safetensors"
    return f"{weights}.safetensors"


def checkpoint_identity(path: str | os.PathLike) -> dict:
    """Where a checkpoint is and the sha256 of the weights `load_model` uses (EMA when present)."""
    config = read_config(path)
    name = weights_file(config)
    digest = config.get("files", {}).get(name) or sha256_file(Path(config["path"]) / name)
    return {"path": config["path"], "weights": name, "sha256": digest, "step": config.get("step")}


def load_model(path: str | os.PathLike, weights: str = "ema", device: str | torch.device = "cpu") -> WorldModel:
    """The model of `load_checkpoint`, without the info."""
    return load_checkpoint(path, weights, device)[0]


def rollout_window(config, info: dict) -> int | None:
    """The history window a model streams with unless told: its config's `sample_window`, else its trained window
    (None when neither is known: the whole rollout)."""
    return config.sample_window or trained_window(info)


def trained_window(info: dict) -> int | None:
    """The most past frames a training frame of a checkpoint saw (its clip length - 1): the rollout window that
    stays within what it learnt. None when the info does not say (a checkpoint from outside `scd train`)."""
    clip_len = info.get("train", {}).get("clip_len")
    return max(clip_len - 1, 1) if clip_len else None


def load_trainer_state(path: str | os.PathLike, format: str = FORMAT) -> dict:
    config = read_config(path, format)
    file = _verified(Path(config["path"]), "trainer.pt", config)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for damaged files; its text suggests unsafe loading, so not shown
        raise ValueError(f"checkpoint file {file} is corrupt, truncated or holds objects other than tensors and "
                         "plain data (refused: only those are loaded)") from None


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, extra: dict | None = None,
                      overwrite: bool = False, sample_steps: int | None = None,
                      sample_temperature: float | None = None, sample_shift: float | None = None,
                      sample_window: int | None = None) -> Path:
    """A lean, shippable copy of a checkpoint: the EMA weights as the model's only weights, the config and
    data description, no optimizer state. `extra` is merged into config.json (e.g. a model card summary);
    `sample_steps`, `sample_temperature`, `sample_shift` and `sample_window` replace the model's default sampler
    settings. An existing `dst` is replaced only with `overwrite`, and never when it is (or holds) the source."""
    check_output(dst, overwrite, [src])
    model, info = load_checkpoint(src)
    given = {"sample_steps": sample_steps, "sample_temperature": sample_temperature, "sample_shift": sample_shift,
             "sample_window": sample_window}
    model.config = model.config.replace(**{k: v for k, v in given.items() if v is not None})
    meta = {k: v for k, v in info.items() if k not in ("format", "model", "path", "codec")}  # the model's codec
    meta["exported_from"] = {"path": info["path"], "step": info.get("step")}
    meta.update(extra or {})
    return save_checkpoint(dst, model, meta=meta)
