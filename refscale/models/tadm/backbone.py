"""The Stable Diffusion parts TADM builds on: VAE, UNet, noise schedule, null text embedding, LoRA.

Nothing is ever downloaded. The parts come from either

* a local folder in the diffusers layout (``unet/``, ``vae/``, ``scheduler/``, as
  ``save_pretrained`` writes it and as the Stable Diffusion 2.1-base repository ships it), given
  as ``sd_path`` or the environment variable :data:`SD_PATH_ENV`; loaded with diffusers'
  ``from_pretrained(..., local_files_only=True)``; or
* configuration dictionaries (``base=``): random initialisation from a seed, for tests and for
  measuring speed (:data:`SD21_BASE` holds SD 2.1-base's configs, written out by hand).

The text encoder is not used at run time: TADM conditions the UNet on the embedding of the empty
prompt, precomputed once into ``<sd_path>/null_text_embedding.safetensors`` by
``scripts/make_null_embedding.py`` (:func:`make_null_embedding`, needs ``transformers``).

diffusers and peft are optional dependencies (``pip install refscale[diffusion]``); they are
imported only when a TADM model is built (:func:`require`).
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refscale.errors import ModelError

#: environment variable naming the local Stable Diffusion folder (diffusers layout)
SD_PATH_ENV = "REFSCALE_SD_PATH"
#: file (in the SD folder) and tensor name of the precomputed empty-prompt embedding
NULL_EMBEDDING_FILE = "null_text_embedding.safetensors"
NULL_EMBEDDING_KEY = "null_text_embedding"
#: CLIP's context length: the null embedding of random-init bases has this many tokens
TEXT_TOKENS = 77

#: Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base) configs, written by hand.
#: Built with diffusers 0.42.1 these give 865,910,724 UNet and 83,653,863 VAE parameters.
SD21_BASE: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
        "norm_eps": 1e-5, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
        "dual_cross_attention": False, "use_linear_projection": True, "upcast_attention": False,
        "num_class_embeds": None,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 768,
        "scaling_factor": 0.18215,
    },
    "scheduler": {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "clip_sample": False, "steps_offset": 1,
    },
}

#: LoRA target modules (peft suffix match), as OSEDiff's one-step SD fine-tuning (our choice; the
#: TADM paper does not list them): attention projections, feed-forward and resnet convolutions.
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv", "conv1", "conv2", "conv_shortcut", "conv_out"]
VAE_DECODER_LORA_TARGETS = ["conv_in", "conv1", "conv2", "conv_shortcut", "conv", "conv_out",
                            "to_q", "to_k", "to_v", "to_out.0"]


def require():
    """Import diffusers and peft, or raise a clear :class:`ModelError`."""
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError as e:
        raise ModelError(f"TADM needs the optional packages diffusers and peft ({e.name or e} is missing): "
                         "pip install refscale[diffusion]") from None
    import diffusers
    import peft

    return diffusers, peft


def _installed(name: str) -> bool:
    """Whether a package can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. a module blocked with sys.modules[name] = None
        return False


@dataclass
class Parts:
    """What TADM takes from Stable Diffusion."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    alphas_cumprod: torch.Tensor  # [T] float64
    prediction_type: str
    null_embedding: torch.Tensor  # [1, tokens, cross_attention_dim] float32
    source: str  # folder or "random:<seed>"


def resolve_sd_path(sd_path: str | os.PathLike | None) -> Path:
    """``sd_path`` or ``$REFSCALE_SD_PATH``, checked to be a diffusers-layout folder."""
    text = os.fspath(sd_path) if sd_path is not None else os.environ.get(SD_PATH_ENV, "")
    if not text:
        raise ModelError(f"TADM needs Stable Diffusion 2.1-base weights in a local folder (diffusers layout): "
                         f"set {SD_PATH_ENV}=/path/to/stable-diffusion-2-1-base or pass sd_path=...")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise ModelError(f"Stable Diffusion folder not found: {root}")
    missing = [sub for sub in ("unet", "vae", "scheduler") if not (root / sub).is_dir()]
    if missing:
        raise ModelError(f"{root} is not a diffusers-layout Stable Diffusion folder (missing {', '.join(missing)}/)")
    return root


def _scheduler_table(diffusers, config: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """``alphas_cumprod`` and the prediction type of a scheduler config (of any diffusers scheduler class)."""
    keys = set(inspect.signature(diffusers.DDPMScheduler.__init__).parameters)
    sched = diffusers.DDPMScheduler(**{k: v for k, v in config.items() if k in keys and k != "self"})
    return sched.alphas_cumprod.detach().to(torch.float64).clone(), str(sched.config.prediction_type)


def read_null_embedding(path: str | os.PathLike, cross_attention_dim: int) -> torch.Tensor:
    """The empty-prompt embedding ``[1, tokens, cross_attention_dim]`` from a safetensors file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"null text embedding not found: {path}; make it once with "
                         f"python scripts/make_null_embedding.py <SD folder> (needs transformers)")
    try:
        with safe_open(str(path), framework="pt") as f:
            if NULL_EMBEDDING_KEY not in f.keys():
                raise ModelError(f"{path} holds no tensor {NULL_EMBEDDING_KEY!r}")
            emb = f.get_tensor(NULL_EMBEDDING_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read null text embedding {path}: {e}") from None
    if emb.dim() == 2:
        emb = emb[None]
    if emb.dim() != 3 or emb.shape[0] != 1 or emb.shape[-1] != cross_attention_dim:
        raise ModelError(f"null text embedding {path} has shape {list(emb.shape)}; the UNet needs [1, tokens, {cross_attention_dim}]")
    return emb.float().contiguous()


def load_pretrained(sd_path: str | os.PathLike | None = None, null_embedding: str | os.PathLike | None = None,
                    variant: str | None = None) -> Parts:
    """UNet, VAE and noise schedule from a local diffusers-layout folder (never from a hub)."""
    if not _installed("diffusers") or not _installed("peft"):
        require()  # the clear message about the missing packages
    root = resolve_sd_path(sd_path)  # before the slow import: a missing folder is reported at once
    diffusers, _ = require()
    kw = {"local_files_only": True, "torch_dtype": torch.float32}
    if variant:
        kw["variant"] = variant
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
        vae = diffusers.AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        sched_file = root / "scheduler" / "scheduler_config.json"
        sched_cfg = json.loads(sched_file.read_text())
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelError(f"cannot load Stable Diffusion from {root}: {str(e).splitlines()[0]}") from None
    alphas, ptype = _scheduler_table(diffusers, sched_cfg)
    emb_path = Path(null_embedding) if null_embedding is not None else root / NULL_EMBEDDING_FILE
    emb = read_null_embedding(emb_path, int(unet.config.cross_attention_dim))
    return Parts(unet, vae, alphas, ptype, emb, str(root))


def build_random(base: str | dict[str, Any], seed: int = 0, null_embedding: str | os.PathLike | None = None) -> Parts:
    """UNet and VAE randomly initialised from configs (``"sd21-base"`` or ``{"unet", "vae", "scheduler"}``).

    Initialisation uses its own generator state (``seed``), so the same configs and seed give the
    same weights in any process, and the caller's random state is left untouched.
    """
    diffusers, _ = require()
    if base == "sd21-base":
        base = SD21_BASE
    if not isinstance(base, dict) or not {"unet", "vae"} <= set(base):
        raise ModelError("base must be 'sd21-base' or a dict with 'unet' and 'vae' configs (and optionally 'scheduler')")
    base = copy.deepcopy(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        unet = diffusers.UNet2DConditionModel.from_config(base["unet"])
        vae = diffusers.AutoencoderKL.from_config(base["vae"])
        dim = int(unet.config.cross_attention_dim)
        emb = torch.randn(1, TEXT_TOKENS, dim) if null_embedding is None else read_null_embedding(null_embedding, dim)
    alphas, ptype = _scheduler_table(diffusers, base.get("scheduler", SD21_BASE["scheduler"]))
    return Parts(unet, vae, alphas, ptype, emb, f"random:{seed}")


def inject_lora(module: torch.nn.Module, rank: int, targets: list[str]) -> None:
    """Add LoRA adapters (peft) of ``rank`` to the ``targets`` layers of ``module`` (B = 0: no change at first)."""
    if rank <= 0:
        return
    _, peft = require()
    config = peft.LoraConfig(r=int(rank), lora_alpha=int(rank), target_modules=list(targets), init_lora_weights=True)
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as e:
        raise ModelError(f"cannot add LoRA adapters: {str(e).splitlines()[0]}") from None


def make_null_embedding(sd_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Encode the empty prompt with the folder's CLIP text encoder and save it (safetensors).

    Needs ``transformers`` (imported here only). Output: ``<sd_path>/null_text_embedding.safetensors``
    unless ``out`` is given. Returns the path written.
    """
    from safetensors.torch import save_file

    root = Path(sd_path).expanduser()
    for sub in ("tokenizer", "text_encoder"):
        if not (root / sub).is_dir():
            raise ModelError(f"{root} has no {sub}/ folder (diffusers layout) to encode the empty prompt with")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ModelError("making the null text embedding needs transformers: pip install transformers") from None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the text encoder from {root}: {str(e).splitlines()[0]}") from None
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        emb = encoder(ids)[0].float().contiguous()
    path = Path(out) if out is not None else root / NULL_EMBEDDING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({NULL_EMBEDDING_KEY: emb}, str(tmp), metadata={"prompt": "", "source": str(root)})
    os.replace(tmp, path)
    return path
