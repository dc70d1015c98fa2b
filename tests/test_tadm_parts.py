"""TADM building blocks without Stable Diffusion: DFRM (eq. 3-8), TPM, hybrid scheduler (eq. 9-10), tiles.

None of these tests imports diffusers or peft; the last one checks that refscale still imports
(and explains itself) when they are missing.
"""
import subprocess
import sys

import pytest
import torch

from refscale import ops
from refscale.models.tadm import tiles
from refscale.models.tadm.dfrm import DFRM
from refscale.models.tadm.scheduler import HybridScheduler, fixed_x0, timestep_embedding
from refscale.models.tadm.tpm import TPM
from conftest import perturb, synthetic_image

T = 1000


def _alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule (beta 0.00085 .. 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


# ----------------------------------------------------------------------------- DFRM
@pytest.mark.parametrize("scale", [16, 32])
def test_dfrm_shapes_and_bicubic_start(scale):
    torch.manual_seed(0)
    dfrm = DFRM(scale, nf=8, n_blocks=1, gc=8)
    x = synthetic_image(2 * scale, 3 * scale).repeat(2, 1, 1, 1)
    z = torch.randn(2, 4, 2 * scale // 8, 3 * scale // 8)
    z_lr = dfrm.encode(x, z)
    assert z_lr.shape == (2, 3, 2, 3)
    # untrained: z_lr is the bicubic LR image (zero-initialised tail) and F the identity
    assert torch.allclose(z_lr, ops.bicubic_down(x, scale), atol=1e-6)
    assert torch.allclose(dfrm.to_image(z_lr), z_lr, atol=1e-6)
    assert dfrm.decode(z_lr).shape == z.shape


def test_dfrm_flow_inverts_exactly_float64():
    torch.manual_seed(0)
    dfrm = DFRM(16, nf=8, n_blocks=1, flow_cells=3, gc=8).double()
    perturb(dfrm.flow, 0.05)  # leave the identity start: a real nonlinear bijection
    z_lr = torch.randn(2, 3, 11, 7, dtype=torch.float64)
    y = dfrm.to_image(z_lr)
    assert (y - z_lr).abs().max() > 1e-2
    back = dfrm.from_image(y)
    assert (back - z_lr).abs().max() < 1e-12
    assert (dfrm.to_image(dfrm.from_image(y)) - y).abs().max() < 1e-12


def test_dfrm_losses_eq6_eq7_reach_every_part():
    torch.manual_seed(0)
    dfrm = DFRM(16, nf=8, n_blocks=1, gc=8)
    perturb(dfrm, 0.01)
    x = synthetic_image(32, 48)
    z = torch.randn(1, 4, 4, 6)
    out = dfrm.losses(x, z, lambda_rec=2.0, lambda_gui=0.5)
    assert torch.allclose(out["res"], 2.0 * out["rec"] + 0.5 * out["gui"])
    z_lr = dfrm.encode(x, z)
    direct = (dfrm.decode(z_lr) - z).abs().mean()
    quantized = (dfrm.decode(dfrm.from_image(ops.quantize_8bit(dfrm.to_image(z_lr)))) - z).abs().mean()
    assert torch.allclose(out["rec"], direct + quantized, atol=1e-6)
    assert torch.allclose(out["gui"], (dfrm.to_image(z_lr) - ops.bicubic_down(x, 16)).abs().mean(), atol=1e-6)
    out["res"].backward()
    for name in ("encoder", "flow", "decoder"):
        grads = [p.grad for p in getattr(dfrm, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


# ----------------------------------------------------------------------------- TPM and scheduler
def test_tpm_output_in_valid_range():
    torch.manual_seed(0)
    tpm = TPM(4, nf=8, num_train_timesteps=T, init_t=200)
    perturb(tpm, 0.5)
    for z in (torch.zeros(3, 4, 8, 8), torch.randn(3, 4, 8, 8), 1e4 * torch.randn(3, 4, 5, 9), -1e6 * torch.ones(2, 4, 4, 4)):
        t = tpm(z)
        assert t.shape == (z.shape[0],)
        assert torch.isfinite(t).all() and (t >= 0).all() and (t <= T - 1).all()
    fresh = TPM(4, nf=8, num_train_timesteps=T, init_t=200)
    assert (fresh(torch.randn(2, 4, 8, 8)) - 200).abs().max() < 40  # starts near init_t
    with pytest.raises(ValueError):
        TPM(4, num_train_timesteps=T, init_t=999)


def test_fixed_scheduler_epsilon_and_v_prediction():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 4, 6, 6, generator=g)
    eps = torch.randn(4, 4, 6, 6, generator=g)
    a = _alphas_cumprod()[torch.tensor([0, 250, 600, 900])].view(-1, 1, 1, 1)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # the forward process
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(fixed_x0(z_t, eps, a, "epsilon"), x0, atol=1e-4)  # eq. 9
    assert torch.allclose(fixed_x0(z_t, v, a, "v_prediction"), x0, atol=1e-5)
    assert torch.equal(fixed_x0(z_t, x0, a, "sample"), x0)
    with pytest.raises(ValueError):
        fixed_x0(z_t, eps, a, "flow")


def test_hybrid_scheduler_starts_fixed_and_passes_gradients_to_tpm():
    torch.manual_seed(0)
    tpm = TPM(4, nf=8, num_train_timesteps=T)
    sched = HybridScheduler(_alphas_cumprod(), "epsilon", latent_channels=4, nf=8)
    z = torch.randn(2, 4, 8, 8)
    out = torch.randn(2, 4, 8, 8)  # a fixed "UNet output": no gradient path through the UNet here
    t = tpm(z)
    z0 = sched(z, out, t)
    # zero convolution: the hybrid scheduler starts as eq. 9 at round(t), and nothing reaches the TPM yet
    assert torch.equal(z0, sched.fixed(z, out, t))
    a = sched.alphas_cumprod[t.detach().round().long()].view(-1, 1, 1, 1)
    assert torch.allclose(z0, (z - (1 - a).sqrt().float() * out) / a.sqrt().float(), atol=1e-5)
    z0.square().sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tpm.parameters())
    # once the zero conv has moved (one training step), gradients reach the TPM through t
    perturb(sched.learned.zero_conv, 0.1)
    tpm.zero_grad()
    sched(z, out, tpm(z)).square().sum().backward()
    assert sum(p.grad.abs().sum() for p in tpm.parameters()) > 0
    assert sched.learned.zero_conv.weight.grad is not None


def test_scheduler_step_index_and_literal_t0():
    sched = HybridScheduler(_alphas_cumprod(), "v_prediction", nf=8)
    t = torch.tensor([0.2, 10.6, 998.9], requires_grad=True)
    assert sched.step_index(t).tolist() == [0, 11, 999]
    literal = HybridScheduler(_alphas_cumprod(), "epsilon", nf=8, fixed_t=500)
    assert literal.step_index(t).tolist() == [500, 500, 500]
    with pytest.raises(ValueError):
        HybridScheduler(_alphas_cumprod(), "epsilon", fixed_t=1000)
    emb = timestep_embedding(t, 16)
    assert emb.shape == (3, 16) and emb.requires_grad


# ----------------------------------------------------------------------------- tiles
def test_tile_grid_covers_and_merge_reassembles():
    assert tiles.starts(8, 96, 64) == [0]
    assert tiles.starts(200, 96, 64) == [0, 64, 104]
    size = (13, 21)
    (ph, pw), origins = tiles.grid(size, 6, 4)
    covered = torch.zeros(size)
    for y, x in origins:
        covered[y:y + ph, x:x + pw] += 1
    assert (covered > 0).all() and (ph, pw) == (6, 6)
    z = torch.randn(2, 4, *size)
    merged = tiles.merge([z[..., y:y + ph, x:x + pw] for y, x in origins], origins, size)
    assert torch.allclose(merged, z, atol=1e-6)
    w = tiles.gaussian_weights(6, 6)
    assert (w > 0).all() and w[2:4, 2:4].min() > w[0, 0]


# ----------------------------------------------------------------------------- optional dependencies
def test_refscale_imports_without_diffusers():
    code = (
        "import sys; sys.modules['diffusers'] = None; sys.modules['peft'] = None\n"
        "from refscale import zoo\n"
        "from refscale.errors import ModelError\n"
        "assert {'tadm-x16', 'tadm-x32'} <= set(zoo.architectures())\n"
        "try:\n"
        "    zoo.build('tadm-x16', base='sd21-base')\n"
        "except ModelError as e:\n"
        "    print(e)\n"
        "rows = {r['name']: r for r in zoo.catalogue()}\n"
        "print(rows['tadm-x32']['note'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("pip install refscale[diffusion]" in line for line in lines)
