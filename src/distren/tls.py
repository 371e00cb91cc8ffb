"""TLS: the one place that decides how distren's outgoing HTTP checks a server's certificate
(the CLI's client, a server's requests to its peers), and the check of a server's own
certificate and key before it starts (docs/deploy.md, README "TLS").

A CA file (`--ca-file`, else `$DISTREN_CA_FILE`) replaces the system's certificate
authorities for those connections: a farm with its own CA trusts only that CA. Without one,
the system's authorities are used, as by any HTTPS client.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from .errors import DistrenError

CA_FILE_ENV = "DISTREN_CA_FILE"


def ca_file(given: Path | str | None = None) -> Path | None:
    """The CA file to trust: the one given, else $DISTREN_CA_FILE, else None (the system's)."""
    value = given or os.environ.get(CA_FILE_ENV) or None
    return None if value is None else Path(value)


def client_verify(given: Path | str | None = None) -> ssl.SSLContext | bool:
    """httpx's `verify` for outgoing connections: a context trusting only the CA file (see
    `ca_file`), or True (the system's authorities). A CA file that cannot be read is an error
    naming it, not a failure at the first request."""
    path = ca_file(given)
    if path is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise DistrenError(f"cannot use the CA file {path} (--ca-file or ${CA_FILE_ENV}): {reason}") from None


def server_ssl(cert: Path | None, key: Path | None) -> dict:
    """uvicorn's ssl settings for `--tls-cert`/`--tls-key`, after checking that the two load
    and match (else one line naming them, before the server starts); {} without TLS."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise DistrenError("--tls-cert and --tls-key go together")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:   # (an OSError too)
        raise DistrenError(f"the TLS certificate {cert} and key {key} do not load as a pair (PEM, key without "
                           f"a passphrase): {exc.reason or exc}") from None
    except OSError as exc:
        raise DistrenError(f"cannot read the TLS certificate {cert} or key {key}: {exc.strerror or exc}") from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def connection_problem(exc: BaseException) -> str:
    """Why a connection failed, with what to do when it is TLS's doing."""
    return tls_problem(exc) or str(exc)


def tls_problem(exc: BaseException) -> str | None:
    """What to do when a connection failed by TLS's doing (an untrusted certificate, a plain
    HTTP server), else None: a problem that waiting does not cure."""
    text = str(exc)
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        detail = getattr(cause, "verify_message", None) or text
        return (f"its TLS certificate is not trusted ({detail}); give the CA that signed it with --ca-file "
                f"or ${CA_FILE_ENV}")
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"it does not speak TLS here ({text}); is it an http:// server?"
    return None
