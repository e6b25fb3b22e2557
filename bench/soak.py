"""A bounded soak: the service, a worker and the DICOM receiver under steady mixed load.

What runs
---------
Three real processes on loopback, sharing this machine's cores (one torch / ONNX Runtime
/ OpenMP thread each, one worker process): ``camseg serve`` (with camseg.v1.Jobs), a
``camseg worker --concurrency 1`` and a ``camseg dicom-listen`` (no destination: SEGs are
filed). A tiny model (densenet, width 8, 32 px, random weights: the load, not the masks,
matters) and a few dozen synthetic ROIs are made first.

For ``--seconds`` (default 180) a driver keeps a steady rate: Classify 4 a second,
Explain and Segment one a second each (Segment with the PNG, run-length and packed-bit
encodings), a segmentation job of the ROIs submitted through camseg.v1.Jobs every 20 s,
and a 4-slice CT series sent by C-STORE (pynetdicom) every 15 s. Every ``--sample-every``
seconds (default 5) it reads each process's resident memory (VmRSS), open files (the
entries of /proc/PID/fd) and threads (Threads in /proc/PID/status); the worker's pool
children are summed as one row. After the load it waits for every job and every series
to finish, samples once more, and stops the three with SIGTERM.

Checks (exit status 1 when one fails)
-------------------------------------
* no growth after warm-up (``--warmup``, default 45 s): against each process's first
  sample after warm-up, no later sample exceeds RSS + max(15 %, 64 MiB), open files + 12,
  threads + 6;
* zero INTERNAL (and zero UNKNOWN) among the calls; every C-STORE answered Success;
* every job SUCCEEDED and every series filed;
* each process exits 0 on SIGTERM.

Run from the repository root with Redis on 127.0.0.1:6379 (``make soak``). It uses Redis
DB ``$TEST_REDIS_DB`` (13 when unset; flushed), prints tables, and writes
``bench/results/soak.json`` and ``bench/results/soak.png`` (RSS, open files and threads
over time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camseg.data.synth import SynthConfig, generate, synthesize  # noqa: E402
from camseg.models import ModelSpec, build  # noqa: E402
from camseg.models.export import export_model  # noqa: E402
from camseg.models.modeldir import save_model  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2 as pb  # noqa: E402
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc  # noqa: E402
from services.process import ServeProcess, spawn  # noqa: E402
from tests.dicomdata import write_series  # noqa: E402
from tests.jobs.workers import Worker, flushed_redis, start_worker  # noqa: E402

RSS_FRACTION, RSS_MIB, FDS, THREADS = 0.15, 64.0, 12, 6  # allowed growth after warm-up
LISTEN_READY = re.compile(r"camseg dicom-listen: (\S+) on (\S+):(\d+) \(metrics on (\d+|None)\)")
SPLIT_CORES = {"CAMSEG_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DEADLINE = 60.0  # per call: generous, the machine is shared
console = Console(width=150)


# ---------------------------------------------------------------------- set-up
def make_fixture(root: Path) -> tuple[Path, Path]:
    """A model repository (tiny/1) and a folder of 32 px ROIs."""
    data = synthesize(root / "data" / "rois", SynthConfig(n=48, size=32, seed=0))
    model = build(ModelSpec(arch="densenet", input_size=32, width=8)).eval()
    version = root / "repo" / "tiny" / "1"
    save_model(version, model, {"architecture": "densenet", "spec": asdict(model.spec),
                                "classes": ["normal", "tumor"], "gradcam_layer": model.cam_layer,
                                "layers": model.layer_names, "metrics": {}})
    export_model(version, data_dir=data, n_images=8, providers="CPUExecutionProvider")
    return root / "repo", data


def ct_volume(seed: int, n: int = 4, size: int = 32) -> np.ndarray:
    """Synthetic ROIs as CT stored values (intercept -1024) across the soft-tissue window."""
    images, _, _, _ = generate(SynthConfig(n=n, size=size, seed=seed, tumor_fraction=0.99))
    return np.round(-160.0 + 400.0 * images + 1024.0).astype(np.uint16)


@dataclass
class Listener:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_listener(env: dict[str, str], log: Path) -> Listener:
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "camseg", "dicom-listen"], stdout=subprocess.PIPE, stderr=fh,
                                text=True, env={**os.environ, **env})
    assert proc.stdout is not None
    m = LISTEN_READY.search(proc.stdout.readline())
    if not m:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"dicom-listen did not start:\n{log.read_text()[-3000:]}")
    return Listener(proc, int(m.group(3)), log)


# ---------------------------------------------------------------------- sampling
def proc_sample(pids: list[int]) -> tuple[float, int, int] | None:
    """RSS (MiB), open files and threads of ``pids`` together; None when all are gone."""
    rss_kib = fds = threads = 0
    seen = False
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            n_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        seen = True
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kib += int(fields["VmRSS"].split()[0])
        threads += int(fields["Threads"])
        fds += n_fds
    return (rss_kib / 1024, fds, threads) if seen else None


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@dataclass
class Sampler:
    """Samples each named process group every ``every`` seconds in a thread."""

    groups: dict[str, Callable[[], list[int]]]
    every: float
    t0: float
    samples: dict[str, list[tuple[float, float, int, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> None:
        t = time.monotonic() - self.t0
        for name, pids in self.groups.items():
            s = proc_sample(pids())
            if s is not None:
                self.samples.setdefault(name, []).append((t, *s))

    def run(self) -> None:
        while not self._stop.wait(self.every):
            self.take()

    def __enter__(self) -> Sampler:
        self.take()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ---------------------------------------------------------------------- the load
@dataclass
class Outcome:
    kind: str
    start: float
    seconds: float
    code: str


class Load:
    def __init__(self, serve: ServeProcess, listener: Listener, data: Path, tmp: Path, t0: float):
        limit = 64 * 1024 * 1024
        self.channel = grpc.insecure_channel(serve.address, options=[("grpc.max_receive_message_length", limit)])
        self.seg = pb_grpc.SegmentationStub(self.channel)
        self.jobs = pb_grpc.JobsStub(self.channel)
        self.listener, self.data, self.tmp, self.t0 = listener, data, tmp, t0
        images = sorted((data / "images").glob("*.png"))
        self.images = [p.read_bytes() for p in images[:8]]
        self.outcomes: list[Outcome] = []
        self.job_ids: list[str] = []
        self.series: list[str] = []
        self.lock = threading.Lock()
        self.n = 0

    def _image(self) -> pb.Image:
        self.n += 1
        return pb.Image(encoded=self.images[self.n % len(self.images)], id=str(self.n))

    def _timed(self, kind: str, call: Callable[[], str]) -> None:
        start = time.monotonic()
        try:
            code = call()
        except grpc.RpcError as exc:
            code = exc.code().name
        except Exception as exc:  # a failure of the driver itself counts, never vanishes
            code = f"error: {exc!r}"
        with self.lock:
            self.outcomes.append(Outcome(kind, start - self.t0, time.monotonic() - start, code))

    def classify(self) -> str:
        self.seg.Classify(pb.ClassifyRequest(images=[self._image()]), timeout=DEADLINE)
        return "OK"

    def explain(self) -> str:
        self.seg.Explain(pb.ExplainRequest(images=[self._image()], overlay_png=True), timeout=DEADLINE)
        return "OK"

    def segment(self) -> str:
        self.seg.Segment(pb.SegmentRequest(
            images=[self._image(), self._image()], gate=False,
            threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=85),
            mask_encodings=[pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE, pb.MASK_ENCODING_PACKED_BITS]),
            timeout=DEADLINE)
        return "OK"

    def job(self) -> str:
        reply = self.jobs.SubmitJob(pb.SubmitJobRequest(
            kind=pb.JOB_KIND_SEGMENT, model=pb.ModelRef(name="tiny"), data=str(self.data), chunk_size=16,
            threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=90), gate=False), timeout=DEADLINE)
        with self.lock:
            self.job_ids.append(reply.job_id)
        return "OK"

    def dicom(self) -> str:
        from pydicom import dcmread
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
        from pynetdicom import AE

        uid = generate_uid()
        files = write_series(self.tmp / "series" / uid, ct_volume(seed=len(self.series)), series_uid=uid)
        ae = AE(ae_title="SOAK")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.listener.port, ae_title="CAMSEG")
        if not assoc.is_established:
            return "association refused"
        try:
            statuses = [assoc.send_c_store(dcmread(f)) for f in files]
        finally:
            assoc.release()
        bad = [s for s in statuses if "Status" not in s or int(s.Status) != 0]
        with self.lock:
            self.series.append(uid)
        return "OK" if not bad else f"C-STORE status {[hex(int(s.Status)) if 'Status' in s else None for s in bad]}"

    def drive(self, seconds: float, pool: ThreadPoolExecutor) -> list[Future[None]]:
        """Submit each kind at its own steady period until ``seconds`` have passed."""
        periods: dict[str, tuple[float, Callable[[], str]]] = {
            "Classify": (0.25, self.classify), "Explain": (1.0, self.explain), "Segment": (1.0, self.segment),
            "SubmitJob": (20.0, self.job), "DICOM series": (15.0, self.dicom)}
        start = time.monotonic()
        due = {k: start + (2.0 if k in ("SubmitJob", "DICOM series") else 0.0) for k in periods}
        futures: list[Future[None]] = []
        while (now := time.monotonic()) < start + seconds:
            for kind, (period, call) in periods.items():
                if now >= due[kind]:
                    futures.append(pool.submit(self._timed, kind, call))
                    due[kind] += period
            time.sleep(max(0.0, min(due.values()) - time.monotonic()))
        return futures


# ---------------------------------------------------------------------- completion
def wait_for_completion(load: Load, spool: Path, within: float) -> tuple[dict[str, str], dict[str, str]]:
    """The final state of every job and every series, waiting up to ``within`` s."""
    end = time.monotonic() + within
    jobs: dict[str, str] = {}
    series: dict[str, str] = {}
    while True:
        for job_id in load.job_ids:
            if jobs.get(job_id) not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                state = load.jobs.GetJob(pb.JobRef(job_id=job_id), timeout=DEADLINE).state
                jobs[job_id] = pb.JobState.Name(state)
        for uid in load.series:
            path = spool / uid / "1" / "state.json"
            series[uid] = json.loads(path.read_text()).get("state", "?") if path.is_file() else "not received"
        done = all(s in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED") for s in jobs.values()) \
            and all(s in ("filed", "sent", "failed") for s in series.values())
        if done or time.monotonic() > end:
            return jobs, series
        time.sleep(1.0)


# ---------------------------------------------------------------------- report
def growth(samples: list[tuple[float, float, int, int]], warmup: float) -> dict[str, Any]:
    after = [s for s in samples if s[0] >= warmup]
    if not after:
        return {"error": "no sample after warm-up"}
    base, last = after[0], after[-1]
    peak = (max(s[1] for s in after), max(s[2] for s in after), max(s[3] for s in after))
    rss_limit = base[1] + max(RSS_FRACTION * base[1], RSS_MIB)
    return {"warmup_at_s": round(base[0], 1), "end_at_s": round(last[0], 1),
            "rss_mib": {"warmup": round(base[1], 1), "end": round(last[1], 1), "peak": round(peak[0], 1),
                        "limit": round(rss_limit, 1)},
            "fds": {"warmup": base[2], "end": last[2], "peak": peak[1], "limit": base[2] + FDS},
            "threads": {"warmup": base[3], "end": last[3], "peak": peak[2], "limit": base[3] + THREADS},
            "met": bool(peak[0] <= rss_limit and peak[1] <= base[2] + FDS and peak[2] <= base[3] + THREADS)}


def figure(samples: dict[str, list[tuple[float, float, int, int]]], warmup: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for name, rows in samples.items():
        t = [r[0] for r in rows]
        for ax, i in zip(axes, (1, 2, 3), strict=True):
            ax.plot(t, [r[i] for r in rows], marker=".", label=name)
    for ax, label in zip(axes, ("RSS (MiB)", "open files", "threads"), strict=True):
        ax.axvline(warmup, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("camseg soak: each process over time (dashed: end of warm-up)")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=180.0, help="duration of the load")
    p.add_argument("--warmup", type=float, default=45.0, help="seconds before the growth baseline")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "13")))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = p.parse_args()
    if args.warmup >= args.seconds:
        p.error("--warmup must be shorter than --seconds")

    with tempfile.TemporaryDirectory(prefix="camseg-soak-") as tmp_name, flushed_redis(args.redis_db) as redis_url:
        tmp = Path(tmp_name)
        t_setup = time.perf_counter()
        repo, data = make_fixture(tmp)
        spool = tmp / "spool"
        env = {**SPLIT_CORES, "CAMSEG_REDIS_URL": redis_url, "CAMSEG_MODEL_REPO": str(repo),
               "CAMSEG_DATA_ROOTS": json.dumps([str(data.parent), str(spool)]), "CAMSEG_OUTPUT_ROOT": str(tmp / "out")}
        serve = spawn(repo, env={**env, "CAMSEG_DRAIN_DELAY_SECONDS": "0.5"})
        worker: Worker | None = None
        listener: Listener | None = None
        exit_codes: dict[str, int | None] = {}
        try:
            worker = start_worker(env, concurrency=1)
            listener = start_listener({**env, "CAMSEG_DICOM_PORT": "0", "CAMSEG_DICOM_METRICS_PORT": "0",
                                       "CAMSEG_DICOM_MODEL": "tiny", "CAMSEG_DICOM_SPOOL": str(spool),
                                       "CAMSEG_DICOM_QUIET_SECONDS": "2", "CAMSEG_DICOM_POLL_SECONDS": "0.5"},
                                      tmp / "listener.log")
            console.print(f"set up in {time.perf_counter() - t_setup:.0f} s; load for {args.seconds:.0f} s "
                          f"(warm-up {args.warmup:.0f} s), a sample every {args.sample_every:.0f} s")
            w, lis = worker, listener
            groups: dict[str, Callable[[], list[int]]] = {
                "server": lambda: [serve.proc.pid], "worker (main)": lambda: [w.proc.pid],
                "worker (pool)": lambda: children(w.proc.pid), "dicom-listen": lambda: [lis.proc.pid]}
            t0 = time.monotonic()
            load = Load(serve, lis, data, tmp, t0)
            with Sampler(groups, args.sample_every, t0) as sampler, ThreadPoolExecutor(8) as pool:
                futures = load.drive(args.seconds, pool)
                for f in futures:
                    f.result()
                load_seconds = time.monotonic() - t0
                jobs, series = wait_for_completion(load, spool, within=300.0)
                sampler.take()
            samples = sampler.samples
        finally:
            exit_codes["server"] = serve.stop(timeout=60)
            if listener is not None:
                exit_codes["dicom-listen"] = listener.stop()
            if worker is not None:
                worker.stop()
                exit_codes["worker"] = worker.proc.returncode
                worker.log.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checks and tables
    codes = Counter(o.code for o in load.outcomes)
    g = {name: growth(rows, args.warmup) for name, rows in samples.items()}
    checks = {
        "no growth after warm-up": all(v.get("met", False) for v in g.values()),
        "zero INTERNAL or UNKNOWN": codes["INTERNAL"] == 0 and codes["UNKNOWN"] == 0,
        "every call OK": set(codes) == {"OK"},
        "every job succeeded": bool(jobs) and all(s == "JOB_STATE_SUCCEEDED" for s in jobs.values()),
        "every series filed": bool(series) and all(s == "filed" for s in series.values()),
        "exits 0 on SIGTERM": all(c == 0 for c in exit_codes.values()),
    }
    t = Table(title=f"growth after warm-up (limits: RSS +max({RSS_FRACTION:.0%}, {RSS_MIB:.0f} MiB), "
                    f"open files +{FDS}, threads +{THREADS})")
    for col in ("process", "RSS MiB warm-up", "end", "peak", "fds warm-up", "end", "peak", "threads warm-up", "end",
                "peak", "met"):
        t.add_column(col)
    for name, v in g.items():
        if "error" in v:
            t.add_row(name, v["error"], *[""] * 9)
            continue
        r, f, th = v["rss_mib"], v["fds"], v["threads"]
        t.add_row(name, f"{r['warmup']:.1f}", f"{r['end']:.1f}", f"{r['peak']:.1f}", str(f["warmup"]), str(f["end"]),
                  str(f["peak"]), str(th["warmup"]), str(th["end"]), str(th["peak"]), "yes" if v["met"] else "NO")
    console.print(t)
    c = Table(title=f"calls in {load_seconds:.0f} s")
    for col in ("kind", "calls", "OK", "other", "p50 ms", "max ms"):
        c.add_column(col)
    by_kind: dict[str, list[Outcome]] = {}
    for o in load.outcomes:
        by_kind.setdefault(o.kind, []).append(o)
    calls: dict[str, Any] = {}
    for kind, rows in by_kind.items():
        ok = sum(o.code == "OK" for o in rows)
        other = dict(Counter(o.code for o in rows if o.code != "OK"))
        secs = [o.seconds for o in rows]
        calls[kind] = {"calls": len(rows), "ok": ok, "other": other, "p50_ms": 1000 * statistics.median(secs),
                       "max_ms": 1000 * max(secs)}
        c.add_row(kind, str(len(rows)), str(ok), json.dumps(other) if other else "", f"{calls[kind]['p50_ms']:.0f}",
                  f"{calls[kind]['max_ms']:.0f}")
    console.print(c)
    console.print(f"jobs: {Counter(jobs.values())}; series: {Counter(series.values())}; exit codes: {exit_codes}")
    for name, ok in checks.items():
        console.print(f"  {'ok ' if ok else 'FAIL'} {name}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    figure(samples, args.warmup, png)
    result = {"benchmark": "soak: camseg serve, a worker and dicom-listen under steady mixed load",
              "environment": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "limits": {"rss_fraction": RSS_FRACTION, "rss_mib": RSS_MIB, "fds": FDS, "threads": THREADS},
              "growth": g, "calls": calls, "codes": dict(codes),
              "jobs": {"submitted": len(jobs), "states": dict(Counter(jobs.values()))},
              "series": {"sent": len(series), "states": dict(Counter(series.values()))},
              "exit_codes": exit_codes, "checks": checks,
              "samples": {k: [list(r) for r in v] for k, v in samples.items()}}
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"JSON: {args.out}\nfigure: {png}")
    return 0 if all(v for k, v in checks.items() if k != "every call OK") else 1


if __name__ == "__main__":
    sys.exit(main())
