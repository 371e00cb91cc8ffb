"""The error hierarchy. Each error carries its HTTP meaning; one handler in the
server turns any of them into a JSON response, and the CLI into one readable line."""

from __future__ import annotations


class DistrenError(Exception):
    """Raised when distren refuses or cannot do something; the base of all our errors."""

    status = 400
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(DistrenError):
    """Raised when a request's parameters or body are malformed or out of range."""

    code = "bad_request"


class BadURL(DistrenError):
    """Raised when a distren:// URL does not parse."""

    code = "bad_url"


class BadFrameSpec(DistrenError):
    """Raised when a frame list such as "1-40,1000" does not parse."""

    code = "bad_frames"


class BadPackage(DistrenError):
    """Raised when a job tarball is unsafe or malformed (links, .., sizes, ...)."""

    code = "bad_package"


class BadJobXML(DistrenError):
    """Raised when distrenjob.xml is missing, not well-formed, or fails the schema."""

    code = "bad_job_xml"


class BadJob(DistrenError):
    """Raised when a job is well-formed but wrong: unknown backend, cycles, unknown frames."""

    code = "bad_job"


class BadSettings(DistrenError):
    """Raised when a backend refuses a job's settings (an unsafe INI key, a bad value)."""

    code = "bad_settings"


class PackError(DistrenError):
    """Raised when `distren pack` cannot make a package (missing files, unreadable scene)."""

    code = "pack_error"


class TooLarge(DistrenError):
    """Raised when a request body or package exceeds its size cap."""

    status = 413
    code = "too_large"


class RequestTimeout(DistrenError):
    """Raised when a client stops sending a request body."""

    status = 408
    code = "request_timeout"


class StorageFull(DistrenError):
    """Raised when the data folder cannot take a write (disk full, quota, file-size limit)."""

    status = 507
    code = "storage_full"


class NotFound(DistrenError):
    """Raised when a job, frame or output does not exist."""

    status = 404
    code = "not_found"


class Conflict(DistrenError):
    """Raised when an action does not fit the current state (an output of an unfinished frame)."""

    status = 409
    code = "conflict"


class Unauthorized(DistrenError):
    """Raised when a request lacks valid credentials."""

    status = 401
    code = "unauthorized"


class Forbidden(DistrenError):
    """Raised when an authenticated sender asks for something its role may not do (a worker)."""

    status = 403
    code = "forbidden"


class ServerError(DistrenError):
    """Raised when a server answers with an error the client cannot map (5xx, bad JSON)."""

    status = 502
    code = "server_error"


class ServerUnreachable(ServerError):
    """Raised when the server cannot be reached (connection refused or reset, timed out)."""

    status = 503
    code = "server_unreachable"
