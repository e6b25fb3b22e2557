"""TLS for ``camseg dicom-listen``: the listener's server context, the context its SEG
sends use, and the handshake of each incoming connection.

Both sides follow ``camseg serve``: TLS 1.2 at least; the listener presents
``dicom_tls_cert``/``dicom_tls_key`` and, with ``dicom_tls_client_ca``, requires a client
certificate signed by that CA (mutual TLS); without one, any client may connect over TLS and
the calling AE allow-list is the only check of who it is. A listener with a certificate
speaks TLS only: a plaintext association fails its handshake and is closed before a PDU is
read. Sends verify the destination's certificate and host name against
``dicom_destination_tls_ca`` and present ``dicom_destination_tls_cert`` when it is set.

pynetdicom wraps each accepted socket on the one thread that accepts every connection, so a
peer that opened a connection and never finished its handshake would stall all the others.
:class:`DeferredHandshakeContext` leaves the handshake out of the wrap, and
:func:`handshake` (bound to ``EVT_CONN_OPEN``, which runs on the connection's own thread)
does it under a timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from camseg.core.errors import InvalidInputError, shown
from camseg.core.settings import Settings

logger = logging.getLogger(__name__)


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSLContext whose server-side ``wrap_socket`` leaves the handshake to :func:`handshake`."""

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=not server_side,
                                   suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                   session=session)


def _load(what: str, load: Callable[[], None], *paths: Path) -> None:
    """Run ``load``; a missing or unreadable file is a one-line error naming the setting."""
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(p) for p in paths)
        why = shown(getattr(exc, "strerror", None) or exc, 200)
        raise InvalidInputError(f"{what} ({files}): cannot be loaded: {why}") from None


def server_context(s: Settings) -> ssl.SSLContext | None:
    """The listener's context, or None (plaintext) when it has no certificate."""
    if s.dicom_tls_cert is None or s.dicom_tls_key is None:
        return None
    ctx = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # no client-started renegotiation under TLS 1.2
    cert, key = s.dicom_tls_cert, s.dicom_tls_key
    _load("CAMSEG_DICOM_TLS_CERT/KEY", lambda: ctx.load_cert_chain(cert, key), cert, key)
    if s.dicom_tls_client_ca is not None:
        ca = s.dicom_tls_client_ca
        _load("CAMSEG_DICOM_TLS_CLIENT_CA", lambda: ctx.load_verify_locations(cafile=ca), ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(s: Settings) -> ssl.SSLContext | None:
    """The context of the SEG sends, or None (plaintext) when no destination CA is set."""
    if s.dicom_destination_tls_ca is None:
        return None
    ca = s.dicom_destination_tls_ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("CAMSEG_DICOM_DESTINATION_TLS_CA", lambda: ctx.load_verify_locations(cafile=ca), ca)
    if s.dicom_destination_tls_cert is not None and s.dicom_destination_tls_key is not None:
        cert, key = s.dicom_destination_tls_cert, s.dicom_destination_tls_key
        _load("CAMSEG_DICOM_DESTINATION_TLS_CERT/KEY", lambda: ctx.load_cert_chain(cert, key), cert, key)
    return ctx


# a peer that closed without a TLS record (a TCP port probe) is not an attempt worth a warning
_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)


def handshake(event: Any, timeout: float, refused: Callable[[], None]) -> None:
    """``EVT_CONN_OPEN``: finish the TLS handshake of a new connection within ``timeout``;
    on failure (plaintext, no or a bad client certificate, too slow) the connection is
    closed and ``refused`` called. A connection that is not TLS is left alone."""
    sock = event.assoc.dul.socket.socket
    if not isinstance(sock, ssl.SSLSocket):
        return
    address = event.address[0] if event.address else "?"
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(None)  # as pynetdicom leaves a plaintext connection
    except (OSError, ValueError) as exc:
        if isinstance(exc, _CLOSED):
            logger.debug("connection from %s closed before its TLS handshake", address)
        else:
            why = "timed out" if isinstance(exc, TimeoutError) else shown(getattr(exc, "reason", None) or exc, 120)
            logger.warning("TLS handshake with %s failed: %s", address, why)
            refused()
        sock.close()  # the association then ends at once: its socket is gone
        return
    peer = sock.getpeercert()
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], (peer or {}).get("subject", ()))
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    logger.debug("TLS %s from %s%s", sock.version(), address,
                 f" (client certificate CN={shown(names[0])})" if names else "")
