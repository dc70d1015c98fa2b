"""Two CPU processes with torchrun (gloo DDP) end with identical weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from test_train import tiny_config, write_pairs

TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent("""
    import json, os, sys
    from refscale.train import engine
    cfg, out = json.loads(sys.argv[1]), sys.argv[2]
    result = engine.train(cfg, out)
    with open(os.path.join(out, f"rank{result['rank']}.json"), "w") as f:
        json.dump({k: result[k] for k in ("weights_hash", "world_size", "steps", "skipped_steps")}, f)
""")


def test_two_process_torchrun_identical_weights(tmp_path):
    data = write_pairs(tmp_path / "data", n=3, size=32)
    out = tmp_path / "run"
    # model.module makes each worker import this test package's tiny-x2 registration
    cfg = tiny_config(data, steps=4, model={"module": "test_train"}, data={"batch_size": 4}, val={"every_steps": None},
                      name="ddp-tiny")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(cfg), str(out)],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["steps"] == 4
    assert ranks[0]["weights_hash"] == ranks[1]["weights_hash"]
    # the weights trained (differ from the seeded initialisation) and rank 0 saved them
    from refscale import zoo

    import test_train  # noqa: F401  (registers tiny-x2 here too)
    torch.manual_seed(cfg["seed"])
    start = zoo.build("tiny-x2", width=8)
    saved = zoo.load_weights_file(out / "ddp-tiny.safetensors")
    assert saved.weights_hash() == ranks[0]["weights_hash"] != start.weights_hash()
    assert (out / "checkpoints" / "latest.json").is_file()
