"""TADM's three training stages through the training engine, and the shipped configs/tadm-*.yaml.

The engine runs each stage for two steps on synthetic images with the tiny random base of
test_tadm (the configs' SD 2.1-base needs weights this machine does not have); stage 2 starts
from stage 1's weights file and stage 3 from stage 2's, as the configs chain them.
"""
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from refscale import zoo  # noqa: E402
from refscale.train import engine  # noqa: E402
from refscale.train.config import load_file  # noqa: E402
from conftest import synthetic_image  # noqa: E402
from test_tadm import SMALL, TINY  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("tadm-*.yaml"))


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(2):
        arr = (synthetic_image(64, 80, seed=i)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def _stage_config(data: Path, stage: int, init: str | None) -> dict:
    model = {"base": TINY, "base_seed": 3, **SMALL, "stage": stage}
    if init:
        model["init_weights"] = init
    return {
        "name": f"tadm-stage{stage}", "seed": 0,
        "model": {"arch": "tadm-x16", "config": model},
        "data": {"path": str(data), "split": None, "val_names": ["img1"], "patch_size": 32, "batch_size": 1},
        "optim": {"lr": 1e-3},
        "schedule": {"steps": 2},
        "checkpoint": {"every_minutes": None},
        "val": {"every_steps": 0, "max_images": 1, "crop": 64},  # PSNR crops a 16 px border
        "log": {"every_steps": 1, "progress": False, "tensorboard": False},
    }


def test_three_stages_chain_through_the_engine(tmp_path):
    data = _images(tmp_path / "images")
    init, results = None, {}
    for stage in (1, 2, 3):
        result = engine.train(_stage_config(data, stage, init), tmp_path / f"run{stage}")
        assert result["steps"] == 2 and result["skipped_steps"] == 0
        assert result["val"] and result["val"]["psnr_y"] > 5  # downscale -> 8 bits -> upscale ran
        assert Path(result["weights"]).stat().st_size < 2_000_000  # TADM's own tensors, not the SD base
        results[stage] = result
        init = result["weights"]
    assert set(results[1]["loss"]) >= {"total", "rec", "gui"} and "enh" not in results[1]["loss"]
    assert set(results[2]["loss"]) >= {"total", "enh", "l1", "t_mean"} and "rec" not in results[2]["loss"]
    assert set(results[3]["loss"]) >= {"rec", "enh"}
    # each stage changed exactly its own parameter groups
    w = {s: zoo.load_weights_file(results[s]["weights"]) for s in (1, 2, 3)}
    torch.manual_seed(0)  # the engine builds the model right after seeding with the config seed
    fresh = zoo.build("tadm-x16", base=TINY, base_seed=3, **SMALL)
    same = lambda a, b, part: all(torch.equal(x, y) for x, y in zip(getattr(a, part).state_dict().values(),  # noqa: E731
                                                                     getattr(b, part).state_dict().values()))
    assert not same(w[1], fresh, "dfrm") and same(w[1], fresh, "tpm")
    assert same(w[2], w[1], "dfrm") and not same(w[2], w[1], "tpm") and not same(w[2], w[1], "scheduler")
    assert not same(w[3], w[2], "dfrm") and not same(w[3], w[2], "tpm")
    assert any(not torch.equal(p, w[1].lora_parameters()[k]) for k, p in w[2].lora_parameters().items())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_tadm_configs(path):
    cfg = load_file(path)
    model_cfg = dict(cfg["model"]["config"])
    stage = int(path.stem[-1])
    assert model_cfg["stage"] == stage and cfg["model"]["arch"] == path.stem.split("-stage")[0]
    if stage > 1:  # chained to the previous stage's final weights (engine: runs/<config stem>/<name>.safetensors)
        prev = load_file(path.with_name(path.name.replace(f"stage{stage}", f"stage{stage - 1}")))
        assert model_cfg.pop("init_weights") == f"runs/{path.stem[:-1]}{stage - 1}/{prev['name']}.safetensors"
    assert "sd_path" not in model_cfg and "base" not in model_cfg
    model = zoo.build(cfg["model"]["arch"], **{**model_cfg, "base": TINY})  # the real base needs SD weights
    assert model.stage == stage
    assert cfg["data"]["patch_size"] % model.alignment == 0 and cfg["data"]["patch_size"] // model.latent_factor <= 96
    assert all(m < cfg["schedule"]["steps"] for m in cfg["schedule"]["milestones"])
