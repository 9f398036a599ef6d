"""What the client raises: one base class, the HTTP errors of the service by status, the
transport error after the retries, and the version-pinning mismatch."""

from __future__ import annotations


class MeKBError(Exception):
    """Every error of the client."""


class TransportError(MeKBError):
    """No answer from the service (connection refused or reset, timeout) after
    `attempts` tries."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class APIError(MeKBError):
    """The service answered with an error status; `detail` is its `{"detail"}` text."""

    def __init__(self, status: int, detail: str, method: str, path: str,
                 attempts: int = 1) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        self.attempts = attempts


class Unauthorized(APIError):
    """401: missing or wrong API key (admin calls need the admin key)."""


class Forbidden(APIError):
    """403: admin endpoints are disabled on the server (MEKB_SERVING_ADMIN_KEY unset)."""


class NotFound(APIError):
    """404: unknown user MeKB, domain or model version."""


class Conflict(APIError):
    """409: a model version could not be loaded, or the registry refused the change."""


class WrongShard(APIError):
    """421: a sharded replica was asked for a user of another shard (route with
    mekb_client.routing.ShardRouter); `owners` maps each such user to its shard "i/n"."""

    def __init__(self, status: int, detail: str, method: str, path: str,
                 attempts: int = 1) -> None:
        super().__init__(status, detail, method, path, attempts)
        self.owners: dict[str, str] = {}  # filled from the 421 body by the client


class InvalidRequest(APIError):
    """413/422 and other 4xx: the request is wrong; retrying does not help."""


class RateLimited(APIError):
    """429 after the retries."""


class ServerError(APIError):
    """5xx after the retries."""


class ServiceUnavailable(ServerError):
    """503 after the retries: no model version loaded yet."""


class ModelVersionMismatch(MeKBError):
    """The client is pinned to a model version and the service answered with another
    (it was never asked to serve it, or it was switched: activate, rollback, a newer
    trainer version)."""

    def __init__(self, expected: str, got: str, what: str) -> None:
        super().__init__(f"{what}: answered by model version {got}, this client is pinned to "
                         f"{expected} (activate or pin {expected} on the service, or unpin "
                         "the client)")
        self.expected = expected
        self.got = got


_BY_STATUS: dict[int, type[APIError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 421: WrongShard,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(status: int, detail: str, method: str, path: str, attempts: int) -> APIError:
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidRequest)
    return cls(status, detail, method, path, attempts)
