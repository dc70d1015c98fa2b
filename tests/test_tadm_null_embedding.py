"""scripts/make_null_embedding.py on a tiny CLIP text encoder + tokenizer written in the diffusers layout."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

from refscale.models.tadm import backbone  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_null_embedding.py"
TOKENS = 8


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3}))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                        model_max_length=TOKENS, pad_token="!")
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    CLIPTextModel(cfg).save_pretrained(root / "text_encoder")
    return root


def test_script_writes_the_empty_prompt_embedding(clip_folder, tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    out = tmp_path / "null.safetensors"
    run = subprocess.run([sys.executable, str(SCRIPT), str(clip_folder), "-o", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    emb = load_file(out)[backbone.NULL_EMBEDDING_KEY]
    assert emb.shape == (1, TOKENS, 16)
    encoder = CLIPTextModel.from_pretrained(clip_folder / "text_encoder").eval()
    ids = torch.tensor([[0, 1] + [2] * (TOKENS - 2)])  # <start> <end> then padding: the empty prompt
    with torch.no_grad():
        assert torch.allclose(emb, encoder(ids)[0], atol=1e-6)
    # the file feeds a TADM model (cross-attention width 16, as the tiny UNet of test_tadm)
    assert torch.equal(backbone.read_null_embedding(out, 16), emb)
    with pytest.raises(backbone.ModelError, match="shape"):
        backbone.read_null_embedding(out, 1024)


def test_script_errors(clip_folder, tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "tokenizer/" in run.stderr
    code = ("import sys; sys.modules['transformers'] = None\n"
            f"sys.argv = ['x', {str(clip_folder)!r}]\n"
            f"exec(open({str(SCRIPT)!r}).read())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "pip install transformers" in run.stderr
