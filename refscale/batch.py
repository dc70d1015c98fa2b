"""Batch encoding and decoding on Dask (issue 29; ``refscale batch``; docs/archive.md).

::

    refscale batch encode SCENES/ -o OUT/ -m refscale-x2 [--ref REFS/ | --ref-archive ARCHIVE] --workers 2
    refscale batch decode OUT/ -o REBUILT/ [--ref REFS/ | --ref-archive ARCHIVE] --scheduler tcp://host:8786

One ``dask.distributed`` task per scene (the ``dask`` extra), on a ``LocalCluster`` of ``workers``
processes (one thread each) or on a running scheduler given by address. The inputs are what
``refscale encode`` / ``decode`` take for a batch (a folder or a CSV manifest; jobs from
:func:`refscale.files.encode_jobs` / :func:`refscale.files.decode_jobs`).

* **Once per worker.** Each worker process keeps the models it loaded (:data:`_MODELS`) and sets
  its torch threads once: ``cores of its host // workers on that host`` (at least 1), so the
  workers do not oversubscribe the cores (``threads`` overrides). A local cluster bounds each
  worker's memory (``memory_limit``; Dask's nanny restarts a worker that passes it).
* **Resumable, exactly once.** A scene whose output exists and verifies (:func:`verified`: the
  container parses and every CRC holds; a decoded image opens and reads) is skipped, on the client
  before submitting and again in the task; outputs are written atomically (a temporary
  ``.<name>.*.tmp`` beside the output, then ``os.replace``), and stale temporary files of earlier,
  interrupted runs are removed at the start. Stop the client at any point and run the same
  command again: every scene ends up done once, and no partial file is ever at an output's name.
  An existing output that does not verify is replaced only with ``force``.
* **Failures isolated.** A task catches its scene's error and returns it as a one-line message;
  the others go on. A worker lost mid-task (killed, out of memory) is replaced by the nanny and
  its task rescheduled, up to ``retries`` times (Dask's ``allowed-failures`` for a local cluster;
  a remote scheduler applies its own setting), then listed as failed.
* **Report.** ``report`` (JSON) and a summary line: scenes done / skipped / failed, scenes/s and
  Mpx/s (over the scenes done in this run), bytes in and out, each failure with its error.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from refscale.errors import InputError, RefScaleError

DASK_EXTRA_HINT = 'pip install "refscale[dask]" (dask.distributed)'
#: per-worker memory bound of a local cluster (Dask's ``memory_limit``)
DEFAULT_MEMORY_LIMIT = "4GiB"
#: reschedules of a task whose worker died before it gives up (local cluster)
DEFAULT_RETRIES = 2
#: test hook: ``NAME=MARKER`` makes the task of scene NAME kill its worker process once (when
#: the file MARKER does not exist yet; it is created first), to test recovery from a lost worker
CRASH_ONCE_ENV = "REFSCALE_BATCH_CRASH_ONCE"

#: what refscale's atomic writes name their temporary files: ``.<output name>.<random><suffix>``
TEMPORARY_SUFFIXES = (".tmp", ".tmp.tif", ".cog.tif", ".probe")

_MODELS: dict = {}  # per worker process: model spec -> loaded model
_THREADS: list = []  # per worker process: the torch thread count set once
_ARCHIVES: dict = {}  # per worker process: archive path -> candidates, pixel cache


# Dask starts its worker processes with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
# adaptive mmap threshold: every tensor above 64 KiB is then mapped and unmapped afresh and its
# pages faulted in again. A worker encoded 128-px OSCD tiles 1.47x slower than with glibc's
# default (docs/archive.md, "Speed"), so a local cluster's workers keep glibc's default.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(f"refscale batch runs on Dask: {DASK_EXTRA_HINT}") from None


# ============================================================================= verification
def verified(path, kind: str) -> bool:
    """An output that is complete: a container that parses with every CRC holding (``encode``)
    or an image that opens and reads (``decode``)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        if kind == "encode":
            from refscale.format.container import Packet

            Packet.from_bytes(p.read_bytes())
        elif kind == "decode":
            from refscale.io import raster

            if p.suffix.lower() in raster.TIFF_SUFFIXES and raster.have_rasterio():
                import rasterio

                with rasterio.open(p) as src:
                    src.read()
            else:
                from refscale.io.image import read_array

                read_array(p)
        else:  # an LR image beside a container
            from refscale.io.image import read_array

            read_array(p)
        return True
    except Exception:  # noqa: BLE001 - anything that does not read is not done
        return False


def job_done(job: dict, kind: str) -> bool:
    return verified(job["output"], kind) and (job.get("lr_output") is None or verified(job["lr_output"], "lr"))


def stale_temporaries(jobs: list[dict]) -> list[Path]:
    """Temporary files an interrupted atomic write left beside the outputs (``.<name>.*.tmp`` and
    the like, :data:`TEMPORARY_SUFFIXES`)."""
    out = []
    by_folder: dict[Path, set] = {}
    for j in jobs:
        for key in ("output", "lr_output"):
            if j.get(key):
                p = Path(j[key])
                by_folder.setdefault(p.parent, set()).add(p.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if not f.name.startswith(".") or not f.name.endswith(TEMPORARY_SUFFIXES):
                continue
            if any(f.name.startswith(f".{n}.") for n in names):
                out.append(f)
    return out


# ============================================================================= the task (on a worker)
def _setup(opts: dict) -> None:
    if _THREADS:
        return
    import torch

    threads = opts.get("threads")
    if not threads:
        per_host = opts.get("per_host") or {}
        here = per_host.get(_host(), 1)
        threads = max(1, (os.cpu_count() or 1) // max(1, here))
    torch.set_num_threads(int(threads))
    _THREADS.append(int(threads))


def _host() -> str:
    try:
        from distributed import get_worker

        return get_worker().address.split("://")[-1].rsplit(":", 1)[0]
    except Exception:  # noqa: BLE001 - not on a worker
        return socket.gethostbyname(socket.gethostname())


def _model(spec: str):
    if spec not in _MODELS:
        from refscale.zoo import load

        _MODELS[spec] = load(spec)
    return _MODELS[spec]


def _crash_hook(name: str) -> None:
    spec = os.environ.get(CRASH_ONCE_ENV)
    if not spec:
        return
    who, _, marker = spec.partition("=")
    if who == name and marker and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task


def run_task(kind: str, job: dict, opts: dict) -> dict:
    """Encode or decode one scene on a worker; returns its row of the report (never raises for
    the scene's own errors: they come back as ``status: failed`` with a one-line ``error``)."""
    t0 = time.perf_counter()
    row = {"name": job["name"], "input": job["input"], "output": job["output"], "status": "done", "error": None,
           "bytes_in": 0, "bytes_out": 0, "pixels": 0, "seconds": 0.0, "pid": os.getpid(), "reference": job.get("ref")}
    try:
        _setup(opts)
        row["threads"] = _THREADS[0]
        _crash_hook(job["name"])
        if job_done(job, kind):
            row["status"] = "skipped"
            return row
        force = bool(opts.get("force")) or Path(job["output"]).exists() and job_done({**job, "lr_output": None}, kind)
        if kind == "encode":
            _encode(job, opts, row, force)
        else:
            _decode(job, opts, row, force)
        row["bytes_out"] = Path(job["output"]).stat().st_size
    except Exception as e:  # noqa: BLE001 - isolate the scene's failure
        if job_done(job, kind):  # another attempt (a rescheduled task) finished it meanwhile
            row["status"] = "skipped"
        else:
            row["status"] = "failed"
            msg = " ".join(str(e).split()) or type(e).__name__
            row["error"] = msg if isinstance(e, RefScaleError) else f"{type(e).__name__}: {msg}"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _encode(job: dict, opts: dict, row: dict, force: bool) -> None:
    from refscale import files

    model = _model(opts["model"])
    ref = job.get("ref")
    if opts.get("ref_archive"):
        from refscale import archive

        sel = _select(job["input"], opts)
        row["selection"] = {"chosen": None if sel.chosen is None else sel.chosen.name,
                            "fingerprint": None if sel.chosen is None else sel.chosen.fingerprint}
        if sel.chosen is None:
            if not opts.get("fallback_model"):
                raise InputError("no suitable reference in the archive (refused: --refuse-without-ref)")
            model = _model(opts["fallback_model"])
            ref = None
        else:
            ref = str(sel.chosen.path)
        row["reference"] = ref
    j = files.Job(job["name"], Path(job["input"]), None if ref is None else Path(ref), Path(job["output"]),
                  None if job.get("lr_output") is None else Path(job["lr_output"]))
    side = None
    if opts.get("ref_archive"):  # the record first: a container never exists without it
        side = archive.write_reference_record(j.output, sel, force=True)
    try:
        r = files.encode_file(j, model, force=force, **opts.get("encode", {}))
    except BaseException:
        if side is not None and not j.output.exists():
            side.unlink(missing_ok=True)
        raise
    row["bytes_in"] = Path(job["input"]).stat().st_size
    row["pixels"] = r["size"][0] * r["size"][1]
    row["bpp"] = round(r["bpp"], 4)
    row["model"] = r["model"]


def _select(path: str, opts: dict):
    from refscale import archive

    src = opts["ref_archive"]
    if src not in _ARCHIVES:
        _ARCHIVES[src] = (archive.read_archive(src), {})
    cands, cache = _ARCHIVES[src]
    return archive.select_reference(path, cands, cache=cache, **opts.get("select", {}))


def _decode(job: dict, opts: dict, row: dict, force: bool) -> None:
    from refscale import files

    ref = job.get("ref")
    if ref is None and opts.get("ref_archive"):
        from refscale import archive

        ref = archive.reference_for_container(job["input"], opts["ref_archive"], cache=_ARCHIVES.setdefault(
            ("fp", opts["ref_archive"]), {}))
        row["reference"] = None if ref is None else str(ref)
    packet, _ = files.decode_to_file(job["input"], job["output"], ref, model=opts.get("model"), cache=_MODELS,
                                     warn_ref=False, force=force, **opts.get("decode", {}))
    row["bytes_in"] = Path(job["input"]).stat().st_size
    row["pixels"] = packet.size[0] * packet.size[1]


# ============================================================================= the client
def job_dicts(jobs) -> list[dict]:
    return [{"name": j.name, "input": str(j.input), "ref": None if j.ref is None else str(j.ref),
             "output": str(j.output), "lr_output": None if j.lr_output is None else str(j.lr_output)} for j in jobs]


def run_batch(kind: str, jobs, opts: dict, *, workers: int = 2, scheduler: str | None = None,
              memory_limit: str | None = DEFAULT_MEMORY_LIMIT, retries: int = DEFAULT_RETRIES,
              report: str | os.PathLike | None = None, echo=None) -> dict:
    """Run ``jobs`` (:class:`refscale.files.Job` or their dicts) as one Dask task each; returns the
    report (module doc) and writes it to ``report`` (JSON) when given. ``opts``: ``model`` (spec;
    for decode None = the one each container names), ``encode`` / ``decode`` keyword arguments of
    :func:`refscale.files.encode_file` / :func:`refscale.files.decode_to_file`, ``threads``,
    ``force``, ``ref_archive``, ``fallback_model``, ``select``. ``echo``: called with one line per
    scene (default: print to stderr)."""
    require_dask()
    import dask
    from distributed import Client, LocalCluster, as_completed

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    jobs = [j if isinstance(j, dict) else job_dicts([j])[0] for j in jobs]
    if kind not in ("encode", "decode"):
        raise InputError(f"batch kind must be encode or decode, got {kind!r}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    for tmp in stale_temporaries(jobs):
        tmp.unlink(missing_ok=True)
    t_start = t_submit = time.perf_counter()
    t_last = None
    skipped = [j for j in jobs if job_done(j, kind)]
    todo = [j for j in jobs if not job_done(j, kind)]
    rows = [{"name": j["name"], "input": j["input"], "output": j["output"], "status": "skipped", "error": None,
             "bytes_in": 0, "bytes_out": 0, "pixels": 0, "seconds": 0.0} for j in skipped]
    cluster = None
    info = {"kind": kind, "model": opts.get("model"), "scheduler": scheduler, "workers": workers}
    interrupted = False
    try:
        if todo:
            if scheduler:
                client = Client(scheduler, timeout="20s")
            else:
                with dask.config.set({"distributed.scheduler.allowed-failures": retries, **WORKER_ENVIRON}):
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           memory_limit=memory_limit, dashboard_address=None)
                client = Client(cluster)
            try:
                per_host: dict = {}
                for w in client.scheduler_info(n_workers=-1)["workers"].values():
                    host = w.get("host") or w["id"]
                    per_host[host] = per_host.get(host, 0) + int(w.get("nthreads", 1))
                info["workers"] = sum(per_host.values())
                opts = {**opts, "per_host": per_host}
                futures = client.map(run_task, [kind] * len(todo), todo, [opts] * len(todo), pure=False,
                                     key=[f"refscale-{kind}-{i}-{j['name']}-{os.getpid()}-{time.time_ns()}"
                                          for i, j in enumerate(todo)])
                name_of = {f.key: j for f, j in zip(futures, todo)}
                t_submit = time.perf_counter()
                done = 0
                for fut in as_completed(futures):
                    j = name_of[fut.key]
                    try:
                        row = fut.result()
                    except Exception as e:  # noqa: BLE001 - a lost worker (KilledWorker) or a task that could not run
                        row = {"name": j["name"], "input": j["input"], "output": j["output"], "status": "failed",
                               "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                               "bytes_in": 0, "bytes_out": 0, "pixels": 0, "seconds": 0.0}
                    rows.append(row)
                    done += 1
                    t_last = time.perf_counter()
                    echo(f"[{done}/{len(todo)}] {row['name']}: {row['status']}"
                         + (f" ({row['error']})" if row["error"] else f" {row['seconds']:.2f} s"))
            except KeyboardInterrupt:
                interrupted = True
                raise
            finally:
                try:
                    client.close(timeout=5)
                except Exception:  # noqa: BLE001
                    pass
    finally:
        if cluster is not None:
            try:
                cluster.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        t_end = time.perf_counter()
        info["wall_seconds"] = round(t_end - t_start, 3)  # with the cluster's start and end
        result = summarise(rows, len(jobs), (t_last or t_end) - t_submit, info)  # scenes/s: submit to last result
        result["interrupted"] = interrupted
        if report is not None:
            from refscale.files import write_bytes

            write_bytes(Path(report), (json.dumps(result, indent=1) + "\n").encode(), force=True)
    return result


def summarise(rows: list[dict], total: int, seconds: float, info: dict) -> dict:
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    px = sum(r.get("pixels", 0) for r in done)
    return {**info, "scenes": total, "done": len(done), "skipped": sum(r["status"] == "skipped" for r in rows),
            "failed": len(failed), "missing": total - len(rows), "seconds": round(seconds, 3),
            "scenes_per_s": round(len(done) / seconds, 4) if seconds > 0 else None,
            "mpx_per_s": round(px / 1e6 / seconds, 4) if seconds > 0 else None,
            "bytes_in": sum(r.get("bytes_in", 0) for r in done), "bytes_out": sum(r.get("bytes_out", 0) for r in done),
            "failures": [{"name": r["name"], "error": r["error"]} for r in failed],
            "results": sorted(rows, key=lambda r: r["name"])}


def summary_line(r: dict) -> str:
    line = (f"batch {r['kind']}: {r['done']} done, {r['skipped']} skipped, {r['failed']} failed of {r['scenes']} "
            f"in {r['seconds']:.1f} s on {r['workers']} workers: {r['scenes_per_s'] or 0:.3f} scenes/s, "
            f"{r['mpx_per_s'] or 0:.3f} Mpx/s, {r['bytes_in']:,} bytes in, {r['bytes_out']:,} bytes out")
    if r.get("interrupted"):
        line += " (interrupted; run the same command again to finish)"
    return line
