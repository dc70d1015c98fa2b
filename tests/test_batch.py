"""Batch encoding and decoding on Dask (issue 29, refscale/batch.py, ``refscale batch``): a local
cluster, a scheduler given by address, a lost worker, a corrupt scene, resuming after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refscale import batch
from refscale.cli import main
from refscale.format.container import Packet
from refscale.synthetic import synthetic_revisit_pair

torch.set_num_threads(1)
pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]


def _scenes(root: Path, n: int, size: int = 64) -> Path:
    for i in range(n):
        new, old = synthetic_revisit_pair(size, size, seed=i)
        d = root / f"s{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(new).save(d / "hr.png")
        Image.fromarray(old).save(d / "ref.png")
    return root


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_once(out: Path, names: list[str], suffix: str = ".rsc") -> None:
    got = sorted(p.name for p in out.iterdir() if p.suffix == suffix)
    assert got == sorted(f"{n}{suffix}" for n in names)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left
    if suffix == ".rsc":
        for p in out.glob("*.rsc"):
            Packet.from_bytes(p.read_bytes())


@pytest.fixture(scope="module")
def cluster():
    """One running LocalCluster of two worker processes, shared by the tests that give its address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_local_cluster_encode_decode_and_resume(tmp_path, capsys, cluster):
    """Two workers (a LocalCluster started here, given by its scheduler address) encode a small
    archive with a reference model (loaded once per worker) and decode it; a deleted output and a
    stale temporary file are redone / removed by the next run, the rest skipped."""
    src = _scenes(tmp_path / "in", 4)
    out, back = tmp_path / "out", tmp_path / "back"
    addr = cluster.scheduler_address
    code = main(["batch", "encode", str(src), "-o", str(out), "-m", "refscale-x2", "--no-verify", "--scheduler", addr])
    err = capsys.readouterr()
    assert code == 0, err.err
    rep = _report(out / "batch-encode-report.json")
    assert rep["done"] == 4 and rep["failed"] == 0 and rep["workers"] == 2
    assert rep["bytes_out"] == sum(p.stat().st_size for p in out.glob("*.rsc")) and rep["scenes_per_s"] > 0
    assert all(r["threads"] >= 1 for r in rep["results"])
    assert "scenes/s" in err.out and "Mpx/s" in err.out
    _check_once(out, [f"s{i:02d}" for i in range(4)])
    code = main(["batch", "decode", str(out), "-o", str(back), "--ref", str(src), "--scheduler", addr])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in back.glob("*.png")) == [f"s{i:02d}.png" for i in range(4)]
    # resume: one output gone, a temporary file of an interrupted write left behind
    (out / "s02.rsc").unlink()
    (out / ".s01.rsc.abc123.tmp").write_bytes(b"partial")
    code = main(["batch", "encode", str(src), "-o", str(out), "-m", "refscale-x2", "--no-verify", "--scheduler", addr])
    assert code == 0, capsys.readouterr().err
    rep = _report(out / "batch-encode-report.json")
    assert (rep["done"], rep["skipped"]) == (1, 3)
    assert len({r["pid"] for r in rep["results"] if r.get("pid")}) == 1  # the cluster outlives the commands
    assert len(cluster.scheduler.workers) == 2
    _check_once(out, [f"s{i:02d}" for i in range(4)])


def test_ref_archive_on_the_cluster(tmp_path, capsys, cluster):
    """batch encode --ref-archive chooses each scene's reference on the workers; batch decode
    --ref-archive finds it again by the fingerprint the container records."""
    new, arc = tmp_path / "new", tmp_path / "archive"
    new.mkdir()
    arc.mkdir()
    hr, ref = synthetic_revisit_pair(64, 64, seed=0)
    Image.fromarray(hr).save(new / "s0.png")
    Image.fromarray(ref).save(arc / "old0.png")
    rng = np.random.default_rng(5)  # s1: a scene of another kind, from elsewhere
    blocks = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 0.8 + rng.random((64, 64, 3)) * 0.2
    Image.fromarray((blocks * 255).astype(np.uint8)).save(new / "s1.png")
    addr = cluster.scheduler_address
    out = tmp_path / "out"
    code = main(["batch", "encode", str(new), "-o", str(out), "-m", "refscale-x2", "--no-verify", "--ref-archive", str(arc),
                 "--fallback-model", "bicubic-x2", "--scheduler", addr])
    assert code == 0, capsys.readouterr().err
    rep = _report(out / "batch-encode-report.json")
    by = {r["name"]: r for r in rep["results"]}
    assert by["s0"]["selection"]["chosen"] == "old0.png" and by["s0"]["model"].startswith("refscale-x2")
    assert by["s1"]["selection"]["chosen"] is None and by["s1"]["model"].startswith("bicubic-x2")
    assert json.loads((out / "s0.rsc.ref.json").read_text())["reference"] == "old0.png"
    code = main(["batch", "decode", str(out), "-o", str(tmp_path / "back"), "--ref-archive", str(arc), "--scheduler", addr])
    assert code == 0, capsys.readouterr().err
    rows = {r["name"]: r for r in _report(tmp_path / "back" / "batch-decode-report.json")["results"]}
    assert Path(rows["s0"]["reference"]).name == "old0.png" and rows["s1"]["reference"] is None


def test_corrupt_scene_and_lost_worker(tmp_path, capsys, monkeypatch):
    """The command's own LocalCluster of two workers. A corrupt input is listed with its one-line
    error while the others finish; a worker killed
    mid-task is replaced and its scene rescheduled: every scene ends up done exactly once."""
    src = _scenes(tmp_path / "in", 5)
    (src / "s03" / "hr.png").write_bytes(b"not an image at all")
    marker = tmp_path / "crashed"
    monkeypatch.setenv(batch.CRASH_ONCE_ENV, f"s01={marker}")
    import dask
    import distributed

    environ_at_start = []  # the workers' environment settings when the command starts its cluster
    real_cluster = distributed.LocalCluster

    def spy(*args, **kwargs):
        environ_at_start.append(dict(dask.config.get("distributed.nanny.pre-spawn-environ")))
        return real_cluster(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", spy)
    out = tmp_path / "out"
    code = main(["batch", "encode", str(src), "-o", str(out), "-m", "bicubic-x2", "--workers", "2"])
    # glibc's adaptive malloc in the workers: Dask's MALLOC_TRIM_THRESHOLD_ made them 1.47x slower
    assert environ_at_start and environ_at_start[0]["MALLOC_TRIM_THRESHOLD_"] is None
    cap = capsys.readouterr()
    assert code == 2
    assert marker.is_file()  # a worker did die in the task of s01
    rep = _report(out / "batch-encode-report.json")
    assert rep["done"] == 4 and rep["failed"] == 1 and rep["missing"] == 0
    assert rep["failures"][0]["name"] == "s03" and "cannot read image" in rep["failures"][0]["error"]
    assert "s03: cannot read image" in cap.err and "1 failed" in cap.out
    _check_once(out, ["s00", "s01", "s02", "s04"])
    pids = {r["name"]: r["pid"] for r in rep["results"] if r["status"] == "done"}
    assert int(marker.read_text()) != pids["s01"]  # done by another (the new) worker process


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_client_killed_then_restarted(tmp_path, sig):
    """Kill the client (and so its local cluster) once the first scenes are written; run the same
    command again: every scene once, no partial file."""
    n = 12
    src = _scenes(tmp_path / "in", n, size=96)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "refscale.cli", "batch", "encode", str(src), "-o", str(out), "-m", "refscale-x2",
           "--no-verify", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("*.rsc"))) < 2:
            time.sleep(0.05)
        os.killpg(proc.pid, sig)  # the client and its workers, as a terminal's kill of the job would
    finally:
        proc.wait(timeout=30)
    first = len(list(out.glob("*.rsc")))
    assert first >= 2
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rep = _report(out / "batch-encode-report.json")
    assert rep["done"] + rep["skipped"] == n and rep["failed"] == 0 and rep["skipped"] >= first
    _check_once(out, [f"s{i:02d}" for i in range(n)])
