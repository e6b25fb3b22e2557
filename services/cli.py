"""The service's subcommands of ``camseg`` (``serve``, ``client``, ``dicom-listen``) and its demo step.

:mod:`camseg.app.cli` finds this module when the ``serve`` extra is installed; nothing here
imports grpc until a command runs, so ``camseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camseg.core.settings import Settings
from camseg.heat.methods import METHOD_CHOICES, CamMethod

if TYPE_CHECKING:  # the demo (torch, matplotlib) is loaded only when its steps run
    from camseg.app.demo import DemoStep


def register(sub: Any) -> None:
    """Add ``serve`` and ``client`` to the ``camseg`` command's subparsers."""
    sv = sub.add_parser("serve", help="the gRPC service over a model repository")
    sv.add_argument("--model-repo", type=Path, required=True, help="DIR/<name>/<version>/ of exported models")
    sv.add_argument("--host", default=None)
    sv.add_argument("--port", type=int, default=None)
    sv.add_argument("--metrics-port", type=int, default=None)
    sv.add_argument("--plaintext", action="store_true", help="no TLS (loopback development only)")
    sv.add_argument("--tls-cert", type=Path, default=None)
    sv.add_argument("--tls-key", type=Path, default=None)
    sv.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates from this CA")
    sv.add_argument("--no-batching", action="store_true")
    sv.set_defaults(handler=serve)

    hc = sub.add_parser("health", help="ask a running service for its gRPC health (exit 0 when SERVING); "
                                       "container health checks run it")
    hc.add_argument("--server", default="127.0.0.1:50051")
    hc.add_argument("--service", default="", help="a service name; empty: the server as a whole")
    hc.add_argument("--timeout", type=float, default=3.0)
    hc.add_argument("--plaintext", action="store_true")
    hc.add_argument("--ca", type=Path, default=None)
    hc.set_defaults(handler=health_check)

    dl = sub.add_parser("dicom-listen", help="a DICOM C-STORE receiver: each series it is sent is segmented by the "
                                             "workers and its SEG sent on (CAMSEG_DICOM_* settings; flags override)")
    dl.add_argument("--ae-title", default=None, help="the listener's AE title (default CAMSEG)")
    dl.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    dl.add_argument("--port", type=int, default=None, help="0 picks a free port (default 11112)")
    dl.add_argument("--model", default=None, help="model name in the repository that segments")
    dl.add_argument("--version", default=None, help="its version (default: the latest)")
    dl.add_argument("--destination", default=None, help="AE@host:port for the SEGs; empty: file them under the "
                                                        "output root")
    dl.add_argument("--spool", type=Path, default=None, help="folder for received instances")
    dl.add_argument("--metrics-port", type=int, default=None)
    dl.add_argument("--tls-cert", type=Path, default=None, help="the listener's certificate: TLS associations only")
    dl.add_argument("--tls-key", type=Path, default=None)
    dl.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates from this CA")
    dl.add_argument("--destination-ca", type=Path, default=None, help="send SEGs over TLS, verifying the "
                                                                      "destination against this CA")
    dl.add_argument("--destination-cert", type=Path, default=None, help="client certificate for the destination")
    dl.add_argument("--destination-key", type=Path, default=None)
    dl.set_defaults(handler=dicom_listen)

    cl = sub.add_parser("client", help="call a running camseg service")
    rpcs = cl.add_subparsers(dest="client_cmd", required=True, metavar="RPC")
    for name in ("classify", "explain", "segment"):
        c = rpcs.add_parser(name, help=f"{name} image files")
        c.add_argument("files", nargs="+", type=Path)
        c.add_argument("--server", default="127.0.0.1:50051")
        c.add_argument("--model", default="")
        c.add_argument("--version", default="")
        c.add_argument("--plaintext", action="store_true")
        c.add_argument("--ca", type=Path, default=None)
        c.add_argument("--cert", type=Path, default=None)
        c.add_argument("--key", type=Path, default=None)
        if name != "classify":
            c.add_argument("--method", default="gradcam" if name == "explain" else None,
                           choices=METHOD_CHOICES if name == "segment" else tuple(m.value for m in CamMethod),
                           help="segment: default the model's recipe")
            c.add_argument("--out", type=Path, default=Path("camseg-client-out"))
        if name == "explain":
            c.add_argument("--layer-resolution", action="store_true",
                           help="ask for each heatmap at the CAM layer's own resolution with its grid in the image "
                                "(saved as .npy, no overlay): a small reply for a caller that renders it itself")
        if name == "segment":
            c.add_argument("--threshold", default=None, help="default: the model's recipe, else otsu")
            c.add_argument("--largest", action="store_true")
    cl.set_defaults(handler=client)


def demo_steps(settings: Settings) -> list[tuple[str, DemoStep]]:
    from services.demo import through_service

    return [("serve the exported models over gRPC and segment the test split through the service", through_service)]


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from services.server import serve as run_server

    overrides: dict[str, Any] = {k: v for k, v in {
        "model_repo": args.model_repo, "host": args.host, "port": args.port, "metrics_port": args.metrics_port,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
    }.items() if v is not None}
    if args.plaintext:
        overrides["plaintext"] = True
    if args.no_batching:
        overrides["batching"] = False
    try:
        asyncio.run(run_server(settings.updated(**overrides)))
    except (ValueError, OSError) as exc:
        print(f"camseg: error: {exc}", file=sys.stderr)
        return 2
    return 0


def dicom_listen(args: argparse.Namespace, settings: Settings) -> int:
    """The DICOM receiver until SIGTERM or SIGINT (:mod:`services.dicom_listener`)."""
    import signal
    import threading

    from services.dicom_listener import serve

    overrides: dict[str, Any] = {k: v for k, v in {
        "dicom_ae_title": args.ae_title, "dicom_host": args.host, "dicom_port": args.port,
        "dicom_model": args.model, "dicom_model_version": args.version, "dicom_destination": args.destination,
        "dicom_spool": args.spool, "dicom_metrics_port": args.metrics_port, "dicom_tls_cert": args.tls_cert,
        "dicom_tls_key": args.tls_key, "dicom_tls_client_ca": args.tls_client_ca,
        "dicom_destination_tls_ca": args.destination_ca, "dicom_destination_tls_cert": args.destination_cert,
        "dicom_destination_tls_key": args.destination_key,
    }.items() if v is not None}
    listen_settings = settings.updated(**overrides)  # a bad flag: SettingsError, one line naming it
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(listen_settings, stop)
    except OSError as exc:
        print(f"camseg: error: {exc}", file=sys.stderr)
        return 2
    return 0


def health_check(args: argparse.Namespace, settings: Settings) -> int:
    """grpc.health.v1 Check: prints the status; 0 when SERVING, 1 otherwise or unreachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.plaintext:
        channel = grpc.insecure_channel(args.server)
    else:
        root = args.ca.read_bytes() if args.ca is not None else None
        channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=root))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service),
                                                              timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.server}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.server}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def client(args: argparse.Namespace, settings: Settings) -> int:
    from services.client import SegmentationClient, save_png

    for f in args.files:
        if not f.is_file():
            print(f"camseg: error: {f}: no such file", file=sys.stderr)
            return 2
    with SegmentationClient(args.server, plaintext=args.plaintext, ca=args.ca, cert=args.cert, key=args.key,
                            model=args.model, version=args.version) as c:
        if args.client_cmd == "classify":
            for f, r in zip(args.files, c.classify(args.files), strict=True):
                print(f"{f}\t{r.label}\t" + "\t".join(f"{p:.4f}" for p in r.probabilities))
        elif args.client_cmd == "explain" and args.layer_resolution:
            import numpy as np

            for f, h in zip(args.files, c.explain(args.files, method=args.method, resolution="layer"), strict=True):
                path = args.out / f"{f.stem}_heatmap.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, h.heatmap)
                g = h.grid
                assert g is not None
                print(f"{f}\t{h.classification.label}\t{path}\t{h.heatmap.shape[0]}x{h.heatmap.shape[1]} cells of "
                      f"{g.scale_y:g}x{g.scale_x:g} px, offset ({g.offset_y:g}, {g.offset_x:g})")
        elif args.client_cmd == "explain":
            for f, h in zip(args.files, c.explain(args.files, method=args.method, overlay=True), strict=True):
                save_png(args.out / f"{f.stem}_heatmap.png", h.overlay_png)
                print(f"{f}\t{h.classification.label}\t{args.out / (f.stem + '_heatmap.png')}")
        else:
            results = c.segment(args.files, method=args.method, threshold=args.threshold, largest=args.largest,
                                overlay=True, png=True)
            for f, m in zip(args.files, results, strict=True):
                save_png(args.out / f"{f.stem}_mask.png", m.png)
                save_png(args.out / f"{f.stem}_overlay.png", m.overlay_png)
                print(f"{f}\t{m.classification.label}\tarea {m.area}\t{args.out / (f.stem + '_mask.png')}")
    return 0
