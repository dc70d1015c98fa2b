"""The 8-bit rounding rule of the stored LR (refscale.format.rounding): its values, and that it is
written once -- no other module of the package, the benchmarks or the scripts spells it out."""
import re
from pathlib import Path

import numpy as np
import torch

from refscale.format import rounding

ROOT = Path(__file__).resolve().parent.parent


def test_levels_round_half_to_even_after_the_clamp():
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.4 / 255, 0.5, 1.0, 3.0, float("inf")], dtype=torch.float64)
    assert rounding.levels(x).tolist() == [0, 0, 0, 2, 2, 1, 128, 255, 255, 255]
    assert rounding.to_uint8(x).dtype == torch.uint8 and rounding.to_uint8(x).tolist() == rounding.levels(x).tolist()
    assert rounding.levels(x).dtype == torch.float64  # in the input's dtype


def test_the_forms_agree():
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    u8 = rounding.to_uint8(x)
    assert torch.equal(rounding.round_8bit(x), u8.float() / 255)
    assert np.array_equal(rounding.to_uint8_hwc(x), u8[0].permute(1, 2, 0).numpy())
    assert rounding.to_uint8_hwc(x).flags["C_CONTIGUOUS"]
    y = x.clone().requires_grad_()
    assert not rounding.to_uint8(y).requires_grad  # detached


#: ``round(... clamp(0, 1) * 255)``, ``round(np.clip(..., 0, 1) * 255)``, ``round(x * 255)`` and
#: ``(... * 255).round()``: the rule spelled out again
COPIES = re.compile(r"\bround\([^\n]*(?:clamp|clip)\([^\n]*0, 1\) \* 255\b|\bround\(\w+ \* 255\)|\* 255\)\.round\(\)")


def test_the_rule_is_written_once():
    home = ROOT / "refscale" / "format" / "rounding.py"
    files = [p for d in ("refscale", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py") if p != home]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
             if COPIES.search(line)]
    assert found == []
    assert COPIES.search("v = torch.round(x.clamp(0, 1) * 255)") and COPIES.search("np.round(np.clip(a, 0, 1) * 255)")
    assert COPIES.search("torch.round(ref * 255) / 255") and COPIES.search("(x.clamp(0, 1) * 255).round()")
