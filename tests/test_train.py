"""Training engine: resume equivalence, NaN guard, checkpoint files, overfitting, config errors.

Everything runs on a few 32-48 px synthetic pairs written to ``tmp_path`` and a tiny trainable
rescaler defined here (``tiny-x2``), so the engine is tested independently of the real models;
the overfit test also runs IRN at a small width when it is registered.
"""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from refscale import zoo
from refscale.errors import RefScaleError
from refscale.format import rounding
from refscale.protocol import Rescaler, register
from refscale.train import engine
from refscale.train.config import ConfigError

from conftest import synthetic_image


class TinyRescaler(Rescaler):
    """A trainable toy rescaler: LR = box average + learned residual; HR = nearest up + learned
    residual. Its loss draws noise from the global torch RNG (like IRN's z and RefScale's
    quantization noise), so resume must restore RNG states to be exact. ``nan_calls`` lists the
    (1-based) calls of ``training_losses`` whose loss is made NaN (for the guard tests)."""

    arch = "tiny"
    stochastic = True
    needs_reference = True
    signal_on_call = 0  # tests set it to send SIGINT during that call

    def __init__(self, scale: int = 2, width: int = 8, nan_calls: list | None = None):
        super().__init__(scale, width=width, nan_calls=list(nan_calls or []))
        s = scale
        self.down = nn.Sequential(nn.Conv2d(6, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, 3, 3, padding=1))
        self.up = nn.Sequential(nn.Conv2d(6, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, 3 * s * s, 3, padding=1), nn.PixelShuffle(s))
        self.calls = 0

    def _lr(self, hr, ref):
        return F.avg_pool2d(hr, self.scale) + F.avg_pool2d(self.down(torch.cat([hr, ref], 1)), self.scale)

    def _hr(self, lr, ref):
        ref_lr = F.avg_pool2d(ref, self.scale)
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest") + self.up(torch.cat([lr, ref_lr], 1))

    def downscale(self, hr, ref=None):
        self.check_reference(ref)
        return self._lr(hr, ref).clamp(0, 1), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        return self._hr(lr, ref).clamp(0, 1)

    def training_losses(self, hr, ref=None):
        self.calls += 1
        if self.calls == TinyRescaler.signal_on_call:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during this step
        lr = self._lr(hr, ref)
        lr_q = lr + (torch.round(lr * 255) / 255 - lr).detach() + 1e-3 * torch.randn_like(lr)
        terms = {"lr": F.mse_loss(lr, F.avg_pool2d(hr, self.scale)), "hr": F.l1_loss(self._hr(lr_q, ref), hr)}
        total = terms["hr"] + 0.5 * terms["lr"]
        if self.calls in self.config["nan_calls"]:
            total = total * float("nan")
        return {"total": total, **terms}


register("tiny-x2", scale=2)(TinyRescaler)


def write_pairs(root, n=3, size=48):
    """``n`` pair folders (``<name>/hr.png`` + ``ref.png``); the reference is a shifted, re-lit view."""
    for i in range(n):
        d = root / f"pair{i}"
        d.mkdir(parents=True)
        hr = synthetic_image(size, size, seed=i)
        ref = (torch.roll(hr, shifts=(1, 2), dims=(2, 3)) * 0.9 + 0.05).clamp(0, 1)
        for name, img in (("hr", hr), ("ref", ref)):
            arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(d / f"{name}.png")
    return root


def tiny_config(data_path, steps=4, **sections):
    cfg = {
        "seed": 3,
        "model": {"arch": "tiny-x2", "config": {"width": 8}},
        "data": {"path": str(data_path), "split": None, "val_names": ["pair0"], "patch_size": 16, "batch_size": 2},
        "optim": {"lr": 1e-3, "grad_clip": 10.0},
        "schedule": {"steps": steps, "milestones": [3, 7]},
        "checkpoint": {"every_minutes": None, "every_steps": None},
        "val": {"every_steps": 3, "max_images": 1, "crop": 32},
        "log": {"every_steps": 2, "progress": False, "tensorboard": False},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def read_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "data")


RESUME_MODELS = [("tiny-x2", {"width": 8})]
if "refscale-x2" in zoo.architectures():  # ActNorm's data-dependent init must survive a resume
    RESUME_MODELS.append(("refscale-x2", {"blocks": [1], "nf": 8, "n_rrdb": 1, "gc": 8, "ref_gc": 8}))


@pytest.mark.parametrize("arch,config", RESUME_MODELS, ids=[m[0] for m in RESUME_MODELS])
def test_resume_equals_straight_run(pairs, tmp_path, arch, config):
    model = {"arch": arch, "config": config}
    straight = engine.train(tiny_config(pairs, steps=10, model=model), tmp_path / "straight")
    engine.train(tiny_config(pairs, steps=5, model=model), tmp_path / "resumed")
    resumed = engine.train(tiny_config(pairs, steps=10, model=model), tmp_path / "resumed", resume=True)
    assert straight["steps"] == resumed["steps"] == 10
    a, b = read_weights(straight["weights"]), read_weights(resumed["weights"])
    start = zoo.build(arch, **config).state_dict()
    assert max((a[k].float() - start[k].float()).abs().max().item() for k in a) > 1e-4  # training moved the weights
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    # the log of the resumed run continues without duplicated steps
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if "train/total" in line]
    assert steps == [2, 4, 5, 6, 8, 10]


def test_ctrl_c_saves_and_resumes_exactly(pairs, tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    straight = engine.train(tiny_config(pairs, steps=6), tmp_path / "straight")
    monkeypatch.setattr(TinyRescaler, "signal_on_call", 3)
    with pytest.raises(engine.TrainingStopped, match="step 3"):
        engine.train(tiny_config(pairs, steps=6), tmp_path / "stopped")
    assert json.loads((tmp_path / "stopped" / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGINT) == before  # handler restored
    monkeypatch.setattr(TinyRescaler, "signal_on_call", 0)
    resumed = engine.train(tiny_config(pairs, steps=6), tmp_path / "stopped", resume=True)
    a, b = read_weights(straight["weights"]), read_weights(resumed["weights"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_checkpoint_files(pairs, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    cfg = tiny_config(pairs, steps=4, checkpoint={"every_steps": 1, "keep": 2}, log={"tensorboard": True})
    result = engine.train(cfg, out)
    ck = out / "checkpoints"
    pointer = json.loads((ck / "latest.json").read_text())
    assert pointer["step"] == 4
    assert sorted(p.name for p in ck.glob("*.state.pt")) == ["step_00000003.state.pt", "step_00000004.state.pt"]
    with safe_open(str(ck / pointer["weights"]), framework="pt") as f:
        assert f.metadata()["arch"] == "tiny-x2"
    state = torch.load(ck / pointer["state"], weights_only=True)
    assert state["step"] == 4 and "state" in state["optimizer"] and len(state["rng"]) == 1
    assert set(state["rng"][0]) >= {"torch", "numpy", "python", "dataset"}
    # final weights rebuild through the catalogue, with a model card
    model = zoo.load_weights_file(result["weights"])
    assert model.config["width"] == 8
    assert Path(result["weights"]).name == "tiny-x2-data.safetensors"  # <arch>-<data folder> by default
    card = json.loads(Path(result["weights"]).with_suffix(".json").read_text())
    assert card["iterations"] == 4 and "val_psnr_y" in card["metrics"] and card["sha256"] == zoo.sha256_file(result["weights"])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val/psnr_y" in r for r in records) and any("train/hr" in r for r in records)
    # a second fresh run into the same folder is refused
    with pytest.raises(ConfigError, match="--resume"):
        engine.train(cfg, out)


def test_init_weights_continue_a_finished_run(pairs, tmp_path):
    first = engine.train(tiny_config(pairs, steps=4), tmp_path / "first")
    cfg = tiny_config(pairs, steps=3, model={"init_weights": first["weights"]})
    second = engine.train(cfg, tmp_path / "second")
    card = json.loads(Path(second["weights"]).with_suffix(".json").read_text())
    first_card = json.loads(Path(first["weights"]).with_suffix(".json").read_text())
    assert card["iterations"] == 7 and card["wall_time_s"] >= first_card["wall_time_s"]
    assert card["init_from"]["weights"] == first["weights"] and card["init_from"]["iterations"] == 4
    history = card["val_history"]
    assert [h["step"] for h in history] == [0, 3, 4, 7]  # the first run's history, then this run's
    assert first_card["val_history"] == history[:3] and card["bf16"] is False
    # the second run started from the first's weights: its step-0 validation equals the first's last
    log = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and round(log[0]["val/psnr_y"], 4) == history[2]["psnr_y"]
    # another architecture config is refused with a clear error
    bad = tiny_config(pairs, steps=3, model={"config": {"width": 16}, "init_weights": first["weights"]})
    with pytest.raises(ConfigError, match="init_weights"):
        engine.train(bad, tmp_path / "bad")
    # a chain of continuations: the card keeps every stage's record (report_common.training_budget lists them)
    fourth = engine.train(tiny_config(pairs, steps=2, model={"init_weights": second["weights"]}), tmp_path / "fourth")
    card4 = json.loads(Path(fourth["weights"]).with_suffix(".json").read_text())
    assert card4["iterations"] == 9 and card4["init_from"]["iterations"] == 7
    assert card4["init_from"]["init_from"]["iterations"] == 4 and "init_from" not in card4["init_from"]["init_from"]
    # a resumed continuation keeps what it started from (from its checkpoint, not the source again)
    engine.train(tiny_config(pairs, steps=2, model={"init_weights": first["weights"]}), tmp_path / "third")
    os.remove(first["weights"])  # the source is gone; the resume must not need it
    third = engine.train(cfg, tmp_path / "third", resume=True)
    card3 = json.loads(Path(third["weights"]).with_suffix(".json").read_text())
    assert card3["iterations"] == 7 and card3["init_from"]["iterations"] == 4
    assert [h["step"] for h in card3["val_history"]] == [0, 3, 4, 6, 7]  # 6: the 2-step run's final validation


def test_history_of_a_warm_start_from_other_validation_images_is_left_out():
    # same validation crops (bicubic baseline equal within 0.01 dB): joined, without the step-0 repeat
    # (IRN and RefScale x2 crops of the same cities differ by their alignment: 35.5002 vs 35.489)
    before = [{"step": 0, "psnr_y": 20.0, "bicubic_psnr_y": 35.5002}, {"step": 100, "psnr_y": 25.0, "bicubic_psnr_y": 35.489}]
    run = [{"step": 100, "psnr_y": 25.0, "bicubic_psnr_y": 35.49}, {"step": 150, "psnr_y": 26.0, "bicubic_psnr_y": 35.49}]
    assert [h["step"] for h in engine._join_history(before, run)] == [0, 100, 150]
    # another dataset's validation (e.g. an OSCD model continued on natural images): only this run's
    other = [{"step": 100, "psnr_y": 21.0, "bicubic_psnr_y": 26.7}, {"step": 150, "psnr_y": 22.0, "bicubic_psnr_y": 26.7}]
    assert engine._join_history(before, other) == other
    assert engine._join_history(before + other, [{"step": 150, "psnr_y": 22.0, "bicubic_psnr_y": 26.7}]) == other
    # and a card that already holds both (written before this rule) reads as its own crops' history
    assert zoo.val_history({"val_history": before + other}) == other


def test_nan_guard_skips_bad_steps(pairs, tmp_path):
    cfg = tiny_config(pairs, steps=6, model={"config": {"width": 8, "nan_calls": [2, 3]}})
    result = engine.train(cfg, tmp_path / "run")
    assert result["skipped_steps"] == 2
    w = read_weights(result["weights"])
    assert all(torch.isfinite(t).all() for t in w.values())


def test_nan_guard_aborts(pairs, tmp_path):
    cfg = tiny_config(pairs, steps=10, model={"config": {"width": 8, "nan_calls": list(range(1, 11))}},
                      guard={"max_bad_steps": 3})
    with pytest.raises(engine.TrainingError, match="3 steps in a row"):
        engine.train(cfg, tmp_path / "run")


def test_training_reduces_loss(pairs, tmp_path):
    cfg = tiny_config(pairs, steps=60, optim={"lr": 3e-3}, log={"every_steps": 10}, val={"every_steps": None})
    engine.train(cfg, tmp_path / "run")
    losses = [json.loads(line)["train/total"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "train/total" in line]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses


def _psnr_vs_bicubic(model, hr, ref):
    """PSNR-Y of the model's reconstruction from its own 8-bit LR (temperature 0: z at its mean,
    RefScale supplement 2.1), and of bicubic up-sampling of that LR."""
    from refscale import metrics, ops

    with torch.no_grad():
        lr, side = model.downscale(hr, ref)
        lr_q = rounding.to_uint8(lr).float() / 255
        rec = model.upscale(lr_q, side, ref, temperature=0.0, generator=torch.Generator().manual_seed(0))
        bic = ops.bicubic_up(lr_q, model.scale)
    return metrics.psnr(rec, hr, crop_border=model.scale).item(), metrics.psnr(bic, hr, crop_border=model.scale).item()


OVERFIT = []  # (arch, small constructor config, steps, lr); the real models once they are registered
if "irn-x2" in zoo.architectures():
    OVERFIT.append(("irn-x2", {"blocks": [2], "gc": 16}, 300, 3e-3))


@pytest.mark.skipif(not OVERFIT, reason="no trainable real model registered yet")
@pytest.mark.parametrize("arch,config,steps,lr", OVERFIT, ids=[o[0] for o in OVERFIT])
def test_overfit_one_image_beats_bicubic(tmp_path, arch, config, steps, lr):
    """Train on one 32 px image (flipped/rotated) with the short-budget schedule (warm-up, constant,
    cosine tail): its reconstruction from its own 8-bit LR must beat bicubic up-sampling of that LR
    by a clear margin (> 3 dB; measured 4.9-5.4 dB for IRN over seeds 0-3, where 200 steps at a
    constant rate gave 3.1-4.8 dB). After 300 steps a flow has not yet learned to make HR
    insensitive to the sampled z, so the reconstruction is decoded at temperature 0."""
    from refscale.io.image import read_image

    root = write_pairs(tmp_path / "one", n=1, size=32)
    cfg = tiny_config(root, steps=steps, model={"arch": arch, "config": config}, optim={"lr": lr},
                      data={"val_names": [], "patch_size": 32, "batch_size": 1},
                      schedule={"milestones": [], "warmup_steps": 20, "decay": "cosine", "decay_start": 0.5},
                      val={"every_steps": None})
    result = engine.train(cfg, tmp_path / "run")
    model = zoo.load_weights_file(result["weights"])
    hr, ref = read_image(root / "pair0" / "hr.png"), read_image(root / "pair0" / "ref.png")
    rec, bic = _psnr_vs_bicubic(model, hr, ref if model.needs_reference else None)
    assert math.isfinite(rec) and rec > bic + 3.0, (rec, bic)


def test_config_errors(tmp_path, pairs):
    with pytest.raises(ConfigError, match="not found"):
        engine.train_from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        engine.train_from_file(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"model: {{arch: tiny-x2}}\ndata: {{path: {pairs}}}\nschedule: {{steps: 2}}\noptim: {{lrr: 0.1}}\n")
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        engine.train_from_file(typo)
    good = tmp_path / "good.yaml"
    good.write_text(f"model: {{arch: tiny-x2}}\ndata: {{path: {pairs}}}\nschedule: {{steps: 2}}\n")
    with pytest.raises(ConfigError, match="schedule.steps"):
        engine.train_from_file(good, overrides=["schedule.steps=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        engine.train_from_file(good, overrides=["schedule.steps"])
    with pytest.raises(ConfigError, match="'data.patch' must be a mapping|unknown config key 'data.patch'"):
        engine.train_from_file(good, overrides=["data.patch=3"])
    with pytest.raises(ConfigError, match="model.arch"):
        engine.train({"data": {"path": str(pairs)}, "schedule": {"steps": 1}}, tmp_path / "x")
    with pytest.raises(ConfigError, match="val_names.*nowhere"):
        engine.train(tiny_config(pairs, data={"val_names": ["nowhere"]}), tmp_path / "x")
    with pytest.raises(ConfigError, match="nothing to resume"):
        engine.train(tiny_config(pairs), tmp_path / "fresh", resume=True)
    with pytest.raises(ConfigError, match="patch_size"):
        engine.train(tiny_config(pairs, data={"patch_size": 15}), tmp_path / "x")
    with pytest.raises(RefScaleError, match="unknown model"):
        engine.train(tiny_config(pairs, model={"arch": "nope-x2"}), tmp_path / "x")


def test_overrides_and_default_out(tmp_path, pairs, monkeypatch):
    cfg_file = tmp_path / "cfg.yaml"
    import yaml

    cfg = tiny_config(pairs, steps=50)
    cfg_file.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    result = engine.train_from_file(cfg_file, overrides=["schedule.steps=2", "val.every_steps=null"])
    assert result["steps"] == 2 and result["weights"] == str(Path("runs") / "cfg" / "tiny-x2-data.safetensors")
    assert (tmp_path / result["weights"]).is_file()


def test_exponent_numbers_are_numbers(tmp_path):
    """``optim.lr=3e-4`` (PyYAML alone reads a float without a dot as a string) is a number, on the
    command line and in a file; a word stays a word."""
    from refscale.train.config import load_file, parse_overrides

    assert parse_overrides(["optim.lr=3e-4", "a=1E+2", "b=-2.5e-3", "c=1e", "d=x1e5"]) == \
        {"optim": {"lr": 3e-4}, "a": 100.0, "b": -2.5e-3, "c": "1e", "d": "x1e5"}
    f = tmp_path / "cfg.yaml"
    f.write_text("base: " + str(CONFIG_DIR / "irn-x2-oscd-cpu.yaml") + "\noptim:\n  lr: 2e-4\n")
    optim = load_file(f, ["schedule.steps=10", "optim.eps=1e-7"])["optim"]
    assert (optim["lr"], optim["eps"]) == (2e-4, 1e-7)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
OSCD_CONFIGS = [CONFIG_DIR / f"{m}{v}.yaml" for m in ("irn-x2", "irn-x4", "refscale-x2", "refscale-x4") for v in ("", "-oscd-cpu")]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_passes_the_schema(path):
    from refscale.train.config import load_file

    cfg = load_file(path)
    assert cfg["schedule"]["steps"] > 0 and cfg["model"]["arch"]


@pytest.mark.parametrize("path", OSCD_CONFIGS, ids=[p.stem for p in OSCD_CONFIGS])
def test_oscd_configs_build_their_models(path):
    from refscale.train.config import load_file

    cfg = load_file(path)
    model = zoo.build(cfg["model"]["arch"], **cfg["model"]["config"])
    assert cfg["data"]["patch_size"] % model.alignment == 0
    assert all(m < cfg["schedule"]["steps"] for m in cfg["schedule"]["milestones"])
    assert cfg["data"]["val_names"] == ["aguasclaras", "bordeaux"] and cfg["data"]["batch_size"] == 8


def test_lr_schedule_shapes():
    """lr_at: warm-up ramp, MultiStepLR halving, and a constant peak with a cosine/linear tail."""
    from refscale.train.config import resolve

    def cfg(**schedule):
        return resolve({"model": {"arch": "tiny-x2"}, "data": {"path": "x"}, "optim": {"lr": 1e-3},
                        "schedule": {"steps": 100, **schedule}})

    step = cfg(milestones=[50, 75])
    assert [engine.lr_at(s, step) for s in (0, 49, 50, 75, 99)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4])
    warm = cfg(warmup_steps=10, decay="cosine", decay_start=0.8, min_lr=1e-5)
    assert engine.lr_at(0, warm) == pytest.approx(1e-4) and engine.lr_at(9, warm) == pytest.approx(1e-3)
    assert engine.lr_at(10, warm) == engine.lr_at(79, warm) == engine.lr_at(80, warm) == pytest.approx(1e-3)
    tail = [engine.lr_at(s, warm) for s in range(80, 100)]
    assert all(a > b for a, b in zip(tail, tail[1:])) and tail[-1] > 1e-5
    assert engine.lr_at(90, warm) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # cosine midpoint
    lin = cfg(decay="linear", decay_start=0.5)
    assert engine.lr_at(75, lin) == pytest.approx(5e-4) and engine.lr_at(99, lin) == pytest.approx(1e-3 * 1 / 50)
    const = cfg(decay="cosine", decay_start=1.0)
    assert {engine.lr_at(s, const) for s in range(100)} == {1e-3}
    for bad, match in [({"decay": "exp"}, "schedule.decay"), ({"decay": "cosine", "milestones": [5]}, "milestones only"),
                       ({"warmup_steps": -1}, "warmup_steps"), ({"decay_start": 1.5}, "decay_start"),
                       ({"min_lr": 1.0}, "min_lr")]:
        with pytest.raises(ConfigError, match=match):
            cfg(**bad)


def test_lr_mult_groups_train_options_and_warm_start(tmp_path):
    """optim.lr_mult gives RefScale's Ref-Net its own learning rate (a group at lr 0 stays put);
    model.train_options reach configure_training; init_weights of an IRN warm-starts RefScale's
    INN (inn_block irn); unknown groups and options are clear config errors."""
    from refscale.models.irn import IRN

    root = write_pairs(tmp_path / "p", n=2, size=32)
    irn = IRN(2, blocks=[1], gc=4)
    irn_file = tmp_path / "irn-x2-tiny.safetensors"
    zoo.save_weights(irn, irn_file)
    rs_cfg = {"arch": "refscale-x2", "config": {"blocks": [1], "gc": 4, "nf": 8, "n_rrdb": 1, "ref_gc": 4, "inn_block": "irn"},
              "init_weights": str(irn_file), "train_options": {"guide_ramp_steps": 4}}
    cfg = tiny_config(root, steps=2, model=rs_cfg, optim={"lr_mult": {"refnet": 0.0}}, schedule={"milestones": []},
                      data={"val_names": [], "patch_size": 16, "batch_size": 2})
    result = engine.train(cfg, tmp_path / "run")
    trained = zoo.load_weights_file(result["weights"])
    torch.manual_seed(cfg["seed"])  # the engine builds the model right after seeding
    fresh = zoo.build("refscale-x2", **rs_cfg["config"])
    refnet_same = all(torch.equal(a, b) for a, b in zip(trained.refnet.state_dict().values(), fresh.refnet.state_dict().values()))
    assert refnet_same  # lr multiplier 0: Ref-Net did not move
    assert any((p != 0).any() for p in trained.parameter_groups()["cond"])  # the condition weights learned
    card = json.loads(Path(result["weights"]).with_suffix(".json").read_text())
    assert card["init_from"]["weights"] == str(irn_file)
    with pytest.raises(ConfigError, match="lr_mult names unknown parameter groups"):
        engine.train({**cfg, "optim": {**cfg["optim"], "lr_mult": {"nope": 2.0}}}, tmp_path / "bad1")
    with pytest.raises(ConfigError, match="train_options"):
        engine.train({**cfg, "model": {**rs_cfg, "train_options": {"nope": 1}}}, tmp_path / "bad2")
    with pytest.raises(ConfigError, match="init_weights"):  # the paper's Glow blocks cannot take IRN weights
        glow = {**rs_cfg, "config": {k: v for k, v in rs_cfg["config"].items() if k != "inn_block"}}
        engine.train({**cfg, "model": glow}, tmp_path / "bad3")
    with pytest.raises(ConfigError, match="train_options"):  # IRN has no training options
        engine.train(tiny_config(root, steps=1, model={"arch": "irn-x2", "config": {"blocks": [1], "gc": 4},
                                                      "train_options": {"guide_ramp_steps": 3}},
                                 data={"val_names": [], "patch_size": 16, "batch_size": 1}), tmp_path / "bad4")


def test_config_base_chain(tmp_path):
    """base: another config (relative to the file) is read first and updated key by key; chains
    work, cycles and missing bases are clear errors."""
    from refscale.train.config import load_file

    (tmp_path / "a.yaml").write_text("model: {arch: tiny-x2, config: {width: 8}}\ndata: {path: x, patch_size: 16}\n"
                                     "schedule: {steps: 5}\noptim: {lr: 0.001}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {config: {width: 4}}\nschedule: {steps: 7}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\ndata: {patch_size: 32}\n")
    cfg = load_file(tmp_path / "c.yaml", overrides=["optim.lr=0.002"])
    assert cfg["model"] == {**cfg["model"], "arch": "tiny-x2", "config": {"width": 4}}
    assert (cfg["schedule"]["steps"], cfg["data"]["patch_size"], cfg["optim"]["lr"]) == (7, 32, 0.002)
    assert "base" not in cfg
    (tmp_path / "loop1.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop1.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_file(tmp_path / "loop1.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_file(tmp_path / "orphan.yaml")


def test_spike_guard_skips_outlier_gradients(tmp_path, pairs, monkeypatch):
    """guard.max_grad_ratio: once 20 norms are known, a gradient norm above ratio x their median
    skips the update (the weights stay put) and is counted in 'spikes'; others go through."""
    cfg = tiny_config(pairs, steps=26, schedule={"milestones": []}, guard={"max_grad_ratio": 5.0},
                      val={"every_steps": None}, checkpoint={"every_steps": 25})
    real = torch.nn.utils.get_total_norm
    calls = {"n": 0}

    def norm(grads):  # step 22 (0-based 21) pretends to be a spike
        calls["n"] += 1
        return real(grads) * (1000.0 if calls["n"] == 22 else 1.0)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", norm)
    result = engine.train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in log if "spikes" in r][-1]
    assert last["spikes"] == 1 and last["skipped_steps"] == 1 and result["skipped_steps"] == 1
    with pytest.raises(ConfigError, match="max_grad_ratio"):
        engine.train(tiny_config(pairs, steps=2, guard={"max_grad_ratio": 0.5}), tmp_path / "bad")
    # the guard's memory survives a resume
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.state.pt"))[-1], weights_only=True)
    assert len(state["gnorm_history"]) >= 20 and state["spikes"] == 1


def test_training_step_status_combines_processes():
    """A non-finite loss on another process (any_bad) makes every process skip as 'nonfinite', never
    as a spike; a spike needs a finite norm above skip_above; otherwise the weights move."""
    torch.manual_seed(0)
    model = TinyRescaler().train()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    hr = torch.rand(2, 3, 16, 16)
    ref = torch.rand(2, 3, 16, 16)
    before = [p.detach().clone() for p in params]
    _, _, status = engine.training_step(model.training_losses, opt, params, hr, ref, any_bad=lambda bad, spike: (True, spike))
    assert status == "nonfinite" and all(torch.equal(a, b) for a, b in zip(before, params))
    _, gnorm, status = engine.training_step(model.training_losses, opt, params, hr, ref, skip_above=0.0)
    assert status == "spike" and float(gnorm) > 0 and all(torch.equal(a, b) for a, b in zip(before, params))
    _, _, status = engine.training_step(model.training_losses, opt, params, hr, ref, skip_above=1e30)
    assert status == "ok" and any(not torch.equal(a, b) for a, b in zip(before, params))


def test_training_budget_lists_the_stages_of_a_chain():
    from benchmarks.report_common import training_budget

    data = {"training_config": {"data": {"batch_size": 8, "patch_size": 64}}, "wall_time_s": 7200}
    assert training_budget({"name": "irn-x2", **data, "iterations": 500}) == "500 steps x batch 8 x 64 px, 2.00 h"
    assert training_budget({"name": "irn-x2"}) == "-"
    cont = {"name": "irn-x2", **data, "iterations": 700, "init_from": {"weights": "irn-x2", "iterations": 500}}
    assert training_budget(cont) == "500 + 200 steps (the last 200: batch 8 x 64 px), 2.00 h"
    # a continuation (a run's file of the same name) of a warm start from other weights names them
    chain = {"name": "irn-x2-natural", **data, "iterations": 6400,
             "init_from": {"weights": "/runs/a/irn-x2-natural.safetensors", "iterations": 5600,
                           "init_from": {"weights": "irn-x2-oscd", "iterations": 5200,
                                         "init_from": {"weights": "irn-x2-oscd", "iterations": 4000}}}}
    assert training_budget(chain) == "irn-x2-oscd (5200 steps) + 400 + 800 steps (the last 800: batch 8 x 64 px), 2.00 h"
    warm = {"name": "irn-x4-natural", **data, "iterations": 2566, "init_from": {"weights": "irn-x4-oscd", "iterations": 2396}}
    assert training_budget(warm) == "irn-x4-oscd (2396 steps) + 170 steps x batch 8 x 64 px, 2.00 h"


def test_validation_through_a_real_codec(tmp_path, pairs):
    """``val.codec``: the model's LR and the bicubic LR through the real codec (``codec_psnr_*``,
    ``coded_psnr_*``, their sizes) beside the lossless metrics, which stay as without it; the
    bicubic pipeline through JPEG q 30 is below bicubic on the lossless LR; bad settings refused."""
    def first_validation(out):
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return next(x for x in lines if "val/psnr_y" in x)

    engine.train(tiny_config(pairs, steps=1, val={"every_steps": 1, "codec": "jpeg", "quality": 30}), tmp_path / "run")
    engine.train(tiny_config(pairs, steps=1, val={"every_steps": 1}), tmp_path / "plain")
    val, plain_val = first_validation(tmp_path / "run"), first_validation(tmp_path / "plain")
    assert val["val/psnr_y"] == plain_val["val/psnr_y"] and "val/codec_psnr_y" not in plain_val
    assert val["val/coded_psnr_y"] < val["val/bicubic_psnr_y"]
    assert val["val/codec_lr_bytes"] > 0 and val["val/coded_bytes"] > 0
    for bad, match in (({"codec": "hevc-inter", "quality": 30}, "still codec"), ({"codec": "nope"}, "val.codec"),
                       ({"quality": 30}, "val.quality needs val.codec"), ({"codec": "jpeg", "quality": 300}, "val.codec")):
        with pytest.raises(ConfigError, match=match):
            engine.train(tiny_config(pairs, val=bad), tmp_path / "bad")
