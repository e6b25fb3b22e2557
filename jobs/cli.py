"""The workers' subcommands of ``camseg``: ``worker`` and ``jobs submit|status|watch|
cancel|list|resume``. Nothing here imports Celery until a command runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camseg.app.parsing import add_tiling_arguments
from camseg.core.settings import Settings
from camseg.heat.methods import METHOD_CHOICES

if TYPE_CHECKING:  # the demo (torch, matplotlib) is loaded only when its steps run
    from camseg.app.demo import DemoStep


def register(sub: Any) -> None:
    w = sub.add_parser("worker", help="a Celery worker running bulk jobs (Redis at CAMSEG_REDIS_URL)")
    w.add_argument("--concurrency", type=int, default=None, help="worker processes (default: the cores)")
    w.add_argument("--name", default=None, help="worker node name (default: camseg-<pid>@<host>)")
    w.set_defaults(handler=worker)

    b = sub.add_parser("beat", help="the one scheduler: the reconciler and the scheduled filtered retraining")
    b.set_defaults(handler=beat)

    j = sub.add_parser("jobs", help="submit and follow bulk jobs")
    cmds = j.add_subparsers(dest="jobs_cmd", required=True, metavar="ACTION")
    s = cmds.add_parser("submit", help="submit a bulk segmentation, a Dice evaluation or a filtered retraining")
    s.add_argument("--kind", default="segment", choices=("segment", "series", "evaluate", "retrain"),
                   help="series: every DICOM series and NRRD/NIfTI volume under --data, one SEG or mask volume each")
    s.add_argument("--model", required=True, help="model name in the repository")
    s.add_argument("--version", default="", help="model version (default: the latest)")
    s.add_argument("--data", type=Path, default=None, help="folder data set under a configured data root")
    s.add_argument("--volumes", nargs=2, action="append", type=Path, metavar=("IMAGE", "LABEL"), default=[],
                   help="segment: NRRD/NIfTI image + label volumes, sliced along --axis (repeatable)")
    s.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    s.add_argument("--split", default=None, choices=("train", "val", "test"))
    s.add_argument("--method", default=None, choices=METHOD_CHOICES,
                   help="default: the model's recipe (its method, threshold and refinement), else its config's "
                        "method, else gradcam")
    s.add_argument("--layer", default=None)
    s.add_argument("--threshold", default=None, help="default: the model's recipe, else otsu")
    s.add_argument("--largest", action="store_true")
    s.add_argument("--no-gate", action="store_true")
    s.add_argument("--heatmaps", action="store_true",
                   help="keep each heatmap (float16 .npy; for series a float volume beside the mask)")
    s.add_argument("--format", default="auto", choices=("auto", "seg", "nifti", "nrrd"),
                   help="series: DICOM SEG, or a mask volume with the source's geometry (auto: SEG for DICOM, "
                        "the source's format for volumes)")
    s.add_argument("--window", default=None, help="series: DICOM windowing (default: CAMSEG_DICOM_WINDOW, auto)")
    s.add_argument("--chunk-size", type=int, default=None)
    add_tiling_arguments(s)
    s.add_argument("--thresholds", nargs="+", type=float, default=[0.5], help="retrain: filter thresholds")
    s.add_argument("--filters", nargs="+", default=None, help="retrain: filters (default: all four)")
    s.add_argument("--epochs", type=int, default=None, help="retrain: epochs (default: the model's)")
    s.add_argument("--watch", action="store_true", help="follow it with a progress bar until it ends")
    for name in ("status", "watch", "cancel", "resume"):
        c = cmds.add_parser(name, help=f"{name} a job")
        c.add_argument("job_id")
    cmds.add_parser("list", help="every job under the output root")
    j.set_defaults(handler=jobs)


def demo_steps(settings: Settings) -> list[tuple[str, DemoStep]]:
    from jobs.demo import through_workers

    return [("run the test-split segmentation as bulk jobs through a worker of its own", through_workers)]


def worker(args: argparse.Namespace, settings: Settings) -> int:
    import os
    import socket
    import tempfile

    s = settings.updated(worker_concurrency=args.concurrency) if args.concurrency else settings
    threads = s.threads_per_process()
    # before prometheus-client is imported anywhere: each prefork child writes its own files,
    # in a fresh folder under PROMETHEUS_MULTIPROC_DIR where set (a tmpfs in the containers)
    metrics_dir = tempfile.mkdtemp(prefix="camseg-worker-metrics-", dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from celery.signals import task_postrun, task_prerun, worker_process_init, worker_process_shutdown

    from jobs import metrics
    from jobs.app import QUEUE, make_app

    @worker_process_init.connect(weak=False)
    def split_cores(**_: Any) -> None:  # threads per process x processes <= cores
        import torch

        torch.set_num_threads(threads)

    @worker_process_shutdown.connect(weak=False)
    def gone(pid: int | None = None, **_: Any) -> None:
        metrics.process_dead(pid or os.getpid())

    @task_prerun.connect(weak=False)
    def started(task_id: str = "", **_: Any) -> None:
        metrics.task_started(task_id)

    @task_postrun.connect(weak=False)
    def ended(task_id: str = "", task: Any = None, state: str = "", retval: Any = None, **_: Any) -> None:
        metrics.task_ended(task_id, getattr(task, "name", "?"), state or "UNKNOWN")
        if isinstance(retval, dict) and retval.get("summary"):
            metrics.job_finished(retval["summary"])
        if isinstance(retval, dict) and retval.get("images"):
            metrics.IMAGES.inc(int(retval["images"]))

    app = make_app(s)
    if s.worker_metrics_port is not None:
        port = metrics.serve(s.worker_metrics_port, s.redis_url, [QUEUE], s.worker_metrics_host)
        print(f"camseg worker metrics on {s.worker_metrics_host}:{port}", flush=True)
    name = args.name or f"camseg-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(argv=["worker", "--loglevel=INFO", f"--concurrency={s.processes()}", "--pool=prefork",
                          "-Q", QUEUE, "-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat"])
    return 0


def beat(args: argparse.Namespace, settings: Settings) -> int:
    """Run exactly one of these per deployment: two beats would schedule everything twice."""
    from celery.apps.beat import Beat

    from jobs.app import make_app

    s = settings
    s.output_root.mkdir(parents=True, exist_ok=True)
    Beat(app=make_app(s), schedule=str(s.output_root / ".beat-schedule"), loglevel="INFO").run()
    return 0


def jobs(args: argparse.Namespace, settings: Settings) -> int:
    from camseg.pipeline.options import Choices, tiling_of
    from jobs import submit
    from jobs.app import make_app

    s = settings
    app = make_app(s)
    if args.jobs_cmd == "submit" and args.kind != "segment" and args.data is None:
        print("camseg: error: --kind series, evaluate and retrain need --data", file=sys.stderr)
        return 2
    opts = tiling = None
    if args.jobs_cmd == "submit":  # resolved against the model's recipe when the job is planned
        opts = Choices(method=args.method, layer=args.layer, threshold=args.threshold,
                       largest=args.largest or None, gate=False if args.no_gate else None)
        tiling = tiling_of(args.whole, args.scale, args.overlap)
    if args.jobs_cmd == "submit" and args.kind == "series":
        sub = submit.submit_series(app, s, model=args.model, version=args.version, data=args.data,
                                   output=args.format, heatmaps=args.heatmaps, windowing=args.window, options=opts,
                                   tiling=tiling)
        print(f"{sub.job_id}\t{sub.chunks} series")
        return _watch(s, sub.job_id) if args.watch else 0
    if args.jobs_cmd == "submit" and args.kind != "segment":
        if args.kind == "evaluate":
            sub = submit.submit_evaluate(app, s, model=args.model, version=args.version, data=args.data)
        else:
            sub = submit.submit_retrain(app, s, model=args.model, version=args.version, data=args.data,
                                        thresholds=args.thresholds, filters=args.filters, epochs=args.epochs)
        print(f"{sub.job_id}\t{args.kind} in {sub.chunks} parts")
        return _watch(s, sub.job_id) if args.watch else 0
    if args.jobs_cmd == "submit":
        sub = submit.submit_segment(app, s, model=args.model, version=args.version, data=args.data,
                                    volumes=[tuple(v) for v in args.volumes], axis=args.axis, split=args.split,
                                    options=opts, tiling=tiling, heatmaps=args.heatmaps, chunk_size=args.chunk_size)
        print(f"{sub.job_id}\t{sub.images} images in {sub.chunks} chunks")
        return _watch(s, sub.job_id) if args.watch else 0
    if args.jobs_cmd == "list":
        from camseg.bulk import batch

        for st in batch.list_jobs(s.output_root):
            print(f"{st.job_id}\t{st.kind}\t{st.state.value}\t{st.images_done}/{st.images}")
        return 0
    if args.jobs_cmd == "status":
        st = submit.status(s, args.job_id)
        print(f"{st.job_id}\t{st.state.value}\t{st.images_done}/{st.images} images\t{st.chunks_done}/{st.chunks} "
              f"chunks" + (f"\t{st.reason}" if st.reason else ""))
        return 0
    if args.jobs_cmd == "watch":
        return _watch(s, args.job_id)
    if args.jobs_cmd == "cancel":
        st = submit.cancel(s, args.job_id)
        print(f"{st.job_id}\tcancelled at {st.images_done}/{st.images} images")
        return 0
    n = submit.resume(app, s, args.job_id)
    print(f"{args.job_id}\t{n} chunks enqueued")
    return 0


def _watch(s: Settings, job_id: str) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from camseg.bulk.batch import JobState
    from jobs import submit

    with Progress(TextColumn(f"[bold]{job_id}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                  TimeElapsedColumn(), disable=not sys.stderr.isatty()) as bar:
        st = submit.status(s, job_id)
        task = bar.add_task(job_id, total=st.images, state=st.state.value)
        while True:
            st = submit.status(s, job_id)
            bar.update(task, completed=st.images_done, state=st.state.value)
            if st.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
                break
            time.sleep(0.5)
    reason = f"\t{st.reason}" if st.reason else ""
    print(f"{st.job_id}\t{st.state.value}\t{st.images_done}/{st.images} images{reason}")
    return 0 if st.state is JobState.SUCCEEDED else 1
