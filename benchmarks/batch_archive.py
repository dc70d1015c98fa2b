"""Batch encoding on Dask over an archive of OSCD tiles (issue 29): speed-up and stop/restart.

    python -m benchmarks batch_archive build --data ../shared/data/oscd --out ../eval10/tiles [--scenes 200] [--tile 128]
    python -m benchmarks batch_archive speed --tiles ../eval10/tiles --work ../eval10/speed [-m refscale-x2] [--json out.json]
    python -m benchmarks batch_archive restart --tiles ../eval10/tiles --work ../eval10/restart [--rounds 3] [--json out.json]

``build`` cuts ``--scenes`` tiles from the 24 OSCD cities (round robin over the cities, the newer
image as the scene and the same tile of the older image as its reference) into pair folders
``<city>-<row>-<col>/hr.png + ref.png``.

``speed`` encodes the archive four ways, each into a fresh folder, and prints scenes/s:
one process (``refscale encode TILES/ -o OUT``, torch on all cores, then on one thread), ``refscale batch encode
--workers 1`` and ``--workers 2`` (one torch thread per core each). The batch figures are over
the tasks (submit to last result; the cluster's start is printed beside them).

``restart`` starts ``refscale batch encode`` on the archive, kills the client at a random moment
(SIGINT, then SIGKILL of the client process only, alternating), runs the same command again until
it completes, and checks: every scene's container exists once and verifies, no temporary file is left.
Run it on a quiet machine; timings measured beside other jobs say so in the docs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import store

ROOT = Path(__file__).resolve().parents[1]


def build(data: Path, out: Path, scenes: int, tile: int) -> int:
    cities = sorted(d.name for d in data.iterdir() if (d / "img1.png").is_file())
    grids = {}
    for c in cities:
        a = np.asarray(Image.open(data / c / "img2.png").convert("RGB"))
        b = np.asarray(Image.open(data / c / "img1.png").convert("RGB"))
        grids[c] = (a, b, [(r, q) for r in range(a.shape[0] // tile) for q in range(a.shape[1] // tile)])
    if out.exists():
        shutil.rmtree(out)
    made, k = 0, 0
    while made < scenes:
        progressed = False
        for c in cities:
            a, b, cells = grids[c]
            if k < len(cells) and made < scenes:
                r, q = cells[k]
                d = out / f"{c}-{r:02d}-{q:02d}"
                d.mkdir(parents=True)
                sl = np.s_[r * tile:(r + 1) * tile, q * tile:(q + 1) * tile]
                Image.fromarray(a[sl]).save(d / "hr.png")
                Image.fromarray(b[sl]).save(d / "ref.png")
                made += 1
                progressed = True
        k += 1
        if not progressed:
            break
    print(f"{made} tiles of {tile} px from {len(cities)} cities -> {out}")
    return made


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "refscale.cli", *map(str, args)]


def speed(tiles: Path, work: Path, model: str, verify: bool) -> dict:
    n = sum(1 for d in tiles.iterdir() if d.is_dir())
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    extra = [] if verify else ["--no-verify"]
    res = {"scenes": n, "model": model, "verify": verify, "cores": os.cpu_count()}
    for key, threads in (("one_process", None), ("one_process_1thread", 1)):
        env = _env() if threads is None else {**_env(), "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        r = subprocess.run(_cli("encode", tiles, "-o", work / key, "-m", model, *extra), env=env, capture_output=True,
                           text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        res[key] = {"wall_s": round(wall, 2), "scenes_per_s": round(n / wall, 3), "threads": threads or os.cpu_count()}
        print(f"one process (refscale encode, {threads or 'default'} torch threads): {n} scenes in {wall:.1f} s = "
              f"{n / wall:.3f} scenes/s (including model load)")
    for w in (1, 2):
        out = work / f"batch{w}"
        t0 = time.perf_counter()
        r = subprocess.run(_cli("batch", "encode", tiles, "-o", out, "-m", model, "--workers", w, *extra), env=_env(),
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        rep = json.loads((out / "batch-encode-report.json").read_text())
        res[f"batch_{w}"] = {"wall_s": round(wall, 2), "task_s": rep["seconds"], "scenes_per_s": rep["scenes_per_s"],
                             "wall_scenes_per_s": round(n / wall, 3), "mpx_per_s": rep["mpx_per_s"],
                             "threads": sorted({x.get("threads") for x in rep["results"]})}
        print(f"batch --workers {w}: {rep['scenes_per_s']:.3f} scenes/s over the tasks ({rep['seconds']:.1f} s), "
              f"{n / wall:.3f} scenes/s over {wall:.1f} s wall with the cluster's start; {rep['mpx_per_s']:.3f} Mpx/s")
    one = res["one_process"]["scenes_per_s"]
    res["speedup_2_vs_one_process"] = round(res["batch_2"]["wall_scenes_per_s"] / one, 3)
    res["speedup_2_vs_one_process_1thread"] = round(res["batch_2"]["wall_scenes_per_s"]
                                                    / res["one_process_1thread"]["scenes_per_s"], 3)
    res["speedup_2_vs_1_worker"] = round(res["batch_2"]["scenes_per_s"] / res["batch_1"]["scenes_per_s"], 3)
    print(f"two workers vs one process (wall): {res['speedup_2_vs_one_process']:.2f}x "
          f"({res['speedup_2_vs_one_process_1thread']:.2f}x vs one process on one thread); "
          f"vs one worker (tasks): {res['speedup_2_vs_1_worker']:.2f}x")
    return res


def restart(tiles: Path, work: Path, model: str, rounds: int, seed: int) -> dict:
    from refscale.format.container import Packet

    rng = random.Random(seed)
    names = sorted(d.name for d in tiles.iterdir() if d.is_dir())
    results = []
    for k in range(rounds):
        out = work / f"round{k}"
        if out.exists():
            shutil.rmtree(out)
        cmd = _cli("batch", "encode", tiles, "-o", out, "-m", model, "--no-verify", "--workers", 2)
        sig = (signal.SIGINT, signal.SIGKILL)[k % 2]
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a random moment once scenes are being written
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("*.rsc")):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 5.0))
        before = len(list(out.glob("*.rsc")))
        proc.send_signal(sig)  # the client only; a SIGKILLed client's workers are left to exit by themselves
        proc.wait(timeout=120)
        time.sleep(1.0)
        runs = 1
        while True:
            r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800)
            runs += 1
            if r.returncode == 0 or runs > 4:
                break
        rep = json.loads((out / "batch-encode-report.json").read_text())
        rsc = sorted(p.stem for p in out.glob("*.rsc"))
        ok = all(_verifies(p, Packet) for p in out.glob("*.rsc"))
        tmp = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        row = {"signal": sig.name, "written_before_restart": before, "runs": runs, "scenes": len(names),
               "outputs": len(rsc), "every_scene_once": rsc == names, "all_verify": ok, "temporaries_left": tmp,
               "restart_done": rep["done"], "restart_skipped": rep["skipped"], "restart_failed": rep["failed"]}
        results.append(row)
        print(f"round {k}: {sig.name} after {before} scenes; restart: {rep['done']} done, {rep['skipped']} skipped, "
              f"{rep['failed']} failed; every scene once: {row['every_scene_once']}, all verify: {ok}, temporaries left: {len(tmp)}")
    return {"rounds": results}


def _verifies(p: Path, Packet) -> bool:
    try:
        Packet.from_bytes(p.read_bytes())
        return True
    except Exception:  # noqa: BLE001
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--data", type=Path, default=Path("../shared/data/oscd"))
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--scenes", type=int, default=200)
    b.add_argument("--tile", type=int, default=128)
    s = sub.add_parser("speed")
    s.add_argument("--tiles", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("-m", "--model", default="refscale-x2")
    s.add_argument("--no-verify", dest="verify", action="store_false")
    s.add_argument("--json", type=Path, default=store.default_path("batch_archive", "speed"), help="results JSON (default out/bench/batch_archive-speed.json)")
    r = sub.add_parser("restart")
    r.add_argument("--tiles", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("-m", "--model", default="refscale-x2")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", type=Path, default=store.default_path("batch_archive", "restart"), help="results JSON (default out/bench/batch_archive-restart.json)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.data, args.out, args.scenes, args.tile)
        return 0
    res = speed(args.tiles, args.work, args.model, args.verify) if args.cmd == "speed" else \
        restart(args.tiles, args.work, args.model, args.rounds, args.seed)
    if args.json:
        store.save(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
