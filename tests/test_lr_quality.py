"""PIQE and NIQE: the vectorised PIQE against a literal transcription of MATLAB's loops, the AGGD
fit on known distributions, and the expected orderings (noise, blur, blockiness score worse)."""
import math

import numpy as np
import pytest
import torch

from refscale import lr_quality, ops
from refscale.errors import InputError


def _pink(h, w, seed=0):
    """A 1/f ("natural-like") colour texture [1,3,h,w] in [0,1]."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.standard_normal((3, h, w)))
    r = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    r[0, 0] = 1
    img = np.real(np.fft.ifft2(f / r))
    img = (img - img.mean()) / img.std() * 0.18 + 0.5
    return torch.from_numpy(img).float().clamp(0, 1)[None]


def _distorted(x):
    noisy = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.05).clamp(0, 1)
    blurred = ops.gaussian_blur(x, 1.5)
    blocky = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 8), scale_factor=8, mode="nearest")
    return {"noise": noisy, "blur": blurred, "blocks": blocky}


# ----------------------------------------------------------------------------- PIQE
def _piqe_matlab_loops(img):
    """MATLAB piqe.m transcribed loop by loop (1-based indices mapped by hand); returns the score
    and how many blocks were active / impaired / noisy, so the test can see both criteria fire."""
    b = 16
    img = np.pad(img, ((0, (-img.shape[0]) % b), (0, (-img.shape[1]) % b)), mode="edge")
    norm = lr_quality.mscn(img)
    dist, nhsa, n_imp, n_noise = 0.0, 0, 0, 0
    for i in range(0, norm.shape[0], b):
        for j in range(0, norm.shape[1], b):
            blk = norm[i:i + b, j:j + b]
            var = np.var(blk, ddof=1)
            if not var > 0.1:
                continue
            nhsa += 1
            impaired = 0
            edges = [blk[0, :], blk[:, b - 1], blk[b - 1, :], blk[:, 0]]
            for seg in range(b - 6 + 1):
                if any(np.std(e[seg:seg + 6], ddof=1) < 0.1 for e in edges):
                    impaired = 1
                    break
            sigma = math.sqrt(var)
            centre = np.concatenate([blk[:, 7], blk[:, 8]])
            cut = np.delete(blk, 7, axis=1)  # Block(:,center1) = []
            cut = np.delete(cut, 8, axis=1)  # Block(:,center2) = [] on the shortened block
            ratio = np.std(centre, ddof=1) / np.std(cut, ddof=1)
            ratio = 0.0 if np.isnan(ratio) else ratio
            beta = abs(sigma - ratio) / max(sigma, ratio)
            noisy = 1 if sigma > 2 * beta else 0
            dist += impaired * (1 - var) + noisy * var
            n_imp += impaired
            n_noise += noisy
    return (dist + 1) / (nhsa + 1) * 100, nhsa, n_imp, n_noise


@pytest.mark.parametrize("name", ["clean", "noise", "blocks"])
def test_piqe_equals_matlab_loops(name):
    x = _pink(40, 53, seed=2)  # not a multiple of 16: replicate padding
    img = x if name == "clean" else _distorted(x)[name]
    plane = lr_quality._luma_planes(img, "y")[0]
    expected, active, impaired, noisy = _piqe_matlab_loops(plane)
    assert active > 0
    assert lr_quality.piqe(img).item() == pytest.approx(expected, abs=1e-9)
    if name == "blocks":
        assert impaired > 0
    if name == "noise":
        assert noisy > 0


def test_piqe_flat_image_is_100_and_values_in_range():
    assert lr_quality.piqe(torch.full((1, 3, 33, 20), 0.4)).item() == 100.0
    s = lr_quality.piqe(_pink(64, 64)).item()
    assert 0 < s < 100


def test_piqe_worse_for_noise_blur_and_blocks():
    x = _pink(96, 96, seed=0)
    clean = lr_quality.piqe(x).item()
    scores = {k: lr_quality.piqe(v).item() for k, v in _distorted(x).items()}
    print(f"PIQE clean {clean:.2f}, " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    assert all(v > clean + 5 for v in scores.values())


def test_piqe_gray_and_y_and_grey_input():
    x = _pink(48, 48, seed=3)
    y, g = lr_quality.piqe(x, "y").item(), lr_quality.piqe(x, "gray").item()
    assert y != g and abs(y - g) < 20
    grey = x.mean(dim=1, keepdim=True)
    assert lr_quality.piqe(grey, "y").item() == lr_quality.piqe(grey, "gray").item()


# ----------------------------------------------------------------------------- NIQE
def test_aggd_fit_recovers_known_distributions():
    rng = np.random.default_rng(0)
    alpha, bl, br = lr_quality.aggd_params(rng.normal(0, 0.5, 200_000))
    assert alpha == pytest.approx(2.0, abs=0.05)
    assert bl == pytest.approx(0.5 * math.sqrt(2), rel=0.02) and br == pytest.approx(0.5 * math.sqrt(2), rel=0.02)
    alpha, bl, br = lr_quality.aggd_params(rng.laplace(0, 0.3, 200_000))  # GGD alpha 1, scale b
    assert alpha == pytest.approx(1.0, abs=0.05) and bl == pytest.approx(0.3, rel=0.03)
    # an asymmetric GGD (alpha 2, left scale 0.4, right 1.2): each side's mass is proportional to its scale
    n, beta_l, beta_r = 200_000, 0.4, 1.2
    left = rng.random(n) < beta_l / (beta_l + beta_r)
    mag = np.abs(rng.normal(0, 1, n)) / math.sqrt(2)
    alpha, bl, br = lr_quality.aggd_params(np.where(left, -beta_l * mag, beta_r * mag))
    assert alpha == pytest.approx(2.0, abs=0.05)
    assert bl == pytest.approx(beta_l, rel=0.03) and br == pytest.approx(beta_r, rel=0.03)


def test_pristine_model_is_the_published_shape():
    mu, cov = lr_quality.pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > -1e-9
    assert 2 < mu[0] < 3.5  # the MSCN shape parameter of pristine images (Gaussian-like is 2)


def test_niqe_worse_for_noise_blur_and_blocks():
    x = _pink(192, 192, seed=0)
    clean = lr_quality.niqe(x).item()
    scores = {k: lr_quality.niqe(v).item() for k, v in _distorted(x).items()}
    print(f"NIQE clean {clean:.3f}, " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    assert math.isfinite(clean) and clean > 0
    assert all(v > clean + 0.5 for v in scores.values())


def test_niqe_needs_two_whole_blocks_and_is_per_image():
    assert math.isnan(lr_quality.niqe(_pink(95, 300)).item())
    assert math.isnan(lr_quality.niqe(_pink(96, 191)).item())  # one block: no covariance
    a, b = _pink(100, 200, seed=1), _pink(100, 200, seed=4)
    both = lr_quality.niqe(torch.cat([a, b]))
    assert both.shape == (2,) and both.dtype == torch.float64
    assert both[0].item() == lr_quality.niqe(a).item() and both[1].item() == lr_quality.niqe(b).item()
    assert both[0] != both[1]
    # only whole blocks count: extra rows beyond the last block change nothing
    assert lr_quality.niqe(_pink(100, 200, seed=1)[..., :96, :]).item() == both[0].item()


def test_bad_inputs():
    with pytest.raises(InputError):
        lr_quality.piqe(torch.rand(1, 2, 16, 16))
    with pytest.raises(InputError):
        lr_quality.niqe(torch.rand(1, 3, 200, 200), channel="rgb")


def test_cli_scores_saved_lr_folders_like_the_model(tmp_path, capsys):
    """benchmarks/lr_quality.py: ``--lr DIR`` scores image files as they are; for a model's stored
    LR images it gives the numbers ``-m MODEL`` computes by encoding the dataset itself."""
    import json

    from benchmarks import lr_quality as cli

    from refscale.io.image import read_image, write_image
    from refscale.format.rounding import to_uint8

    data, lr_dir = tmp_path / "set", tmp_path / "lr"
    for i in range(2):
        hr = _pink(400, 400, seed=10 + i)
        write_image(hr, data / f"im{i}.png")
        hr = read_image(data / f"im{i}.png")  # the 8-bit image the model sees
        write_image(to_uint8(ops.bicubic_down(hr, 2)).float() / 255, lr_dir / f"im{i}.png")
    assert cli.main(["--data", str(data), "-m", "bicubic-x2", "--lr", str(lr_dir), "--json", str(tmp_path / "q.json")]) == 0
    out = json.loads((tmp_path / "q.json").read_text())
    by_model, by_folder = out["bicubic-x2"], out[str(lr_dir)]
    assert by_model["images"] == by_folder["images"] and math.isfinite(by_model["mean"]["niqe"])
