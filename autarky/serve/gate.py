"""The ASGI gate in front of every route: it refuses what a browser could be tricked into sending,
limits the body size, counts and times requests, and writes the audit record when the response is done.

A web page the operator visits must not be able to use the server: a `Host` the server does not
answer for (DNS rebinding) is a 421, a cross-origin request a 403, and a POST that is not
`application/json` (the one body type a page cannot send cross-origin without asking first, and
the server never says yes: it has no CORS) a 415.

The handlers fill in the record (`request.state.audit`: key, tokens, model, …); the gate opens it
and, for API paths, writes it with the final status and latency.
"""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from autarky.serve.jobs import ClientGone
from autarky.serve.protocol import RequestError, error_response

API_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")  # what the audit log records
ROUTES = (  # the endpoint labels of the request metrics; any other path counts as "other"
    "/",
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
)
# A body over the limit is read and dropped up to this many times the limit (so the client sees the
# 413 rather than a reset connection); past that the connection is closed.
DRAIN_FACTOR = 64
BODY_METHODS = ("POST", "PUT", "PATCH")


class HostPolicy:
    """The `Host` names a server answers for: its bind address, loopback names when it listens on
    loopback (or everywhere), and the names the operator allows (`*`: any).

    An IP address cannot be rebound to another machine, so a wildcard bind answers any IP address;
    a DNS name must be the bind name or one the operator allows.
    """

    def __init__(self, bind: str, allowed: list[str] | tuple[str, ...] = ()):
        self.any = "*" in allowed
        self.names = {_hostname(h) for h in allowed if h != "*"}
        bare = bind.strip("[]").lower().rstrip(".")  # an address or name, as --host takes it
        self.ip = _ip(bare)
        self.wildcard = self.ip is not None and self.ip.is_unspecified
        self.loopback = bare == "localhost" or (self.ip is not None and self.ip.is_loopback)
        self.trusted = set(self.names)  # origins the operator vouches for (loopback is not one)
        if self.ip is None:
            self.names.add(bare)
        if self.loopback or self.wildcard:
            self.names.add("localhost")

    def allows(self, host: str) -> bool:
        name = _hostname(host)
        if self.any or name in self.names:
            return True
        ip = _ip(name)
        return ip is not None and (self.wildcard or ip == self.ip or (self.loopback and ip.is_loopback))

    def same_origin(self, origin: str, host: str) -> bool:
        """Whether a browser's `Origin` is the server's own page (or a name the operator allows)."""
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and (
            parts.netloc.lower() == host.lower() or _hostname(parts.netloc) in self.trusted
        )


def _hostname(host: str) -> str:
    """`Host` without its port or brackets, lowercased, without a final dot."""
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return ""
    return name.rstrip(".")


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def refusal(scope, hosts: HostPolicy) -> RequestError | None:
    """Why a browser may have been tricked into this request, or None (see the module's note)."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    host = headers.get("host")
    if host is not None and not hosts.allows(host):
        return RequestError(
            f"this server does not answer for the host {host!r}; start it with --allowed-host to allow a name",
            status=421,
            code="host_not_allowed",
        )
    origin = headers.get("origin")
    if origin is not None and not hosts.same_origin(origin, host or ""):
        return RequestError(
            f"cross-origin requests (from {origin!r}) are refused: this server has no CORS",
            status=403,
            code="cross_origin_refused",
        )
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if scope["method"] in BODY_METHODS and media_type != "application/json":
        return RequestError(
            f"the request body must be JSON with Content-Type: application/json (got {media_type or 'none'!r})",
            status=415,
            code="unsupported_media_type",
        )
    return None


class Gate:
    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": None,
            "key_id": None,
            "endpoint": f"{scope['method']} {path}",
            "status": 500,
            "tokens_in": 0,
            "tokens_out": 0,
            "latency_ms": 0.0,
        }
        scope.setdefault("state", {})["audit"] = record
        status = {"code": None}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if (error := refusal(scope, self.state.settings.hosts)) is not None:
                await error_response(error)(scope, receive, tracked_send)
                return
            if scope["method"] in BODY_METHODS:
                try:
                    body = await self._read_body(scope, receive)
                except ClientGone:  # or its body did not arrive in time (connection.py said so)
                    record["status"] = 408 if scope["state"].get("timed_out") else 499
                    return
                if body is None:
                    limit = self.state.settings.max_body_bytes
                    error = RequestError(
                        f"the request body is larger than this server's limit of {limit} bytes",
                        status=413,
                        code="request_too_large",
                    )
                    await error_response(error)(scope, receive, tracked_send)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, tracked_send)
        finally:
            if status["code"] is not None and record["status"] != 499:
                record["status"] = status["code"]
            record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
            endpoint = path if path in ROUTES else "other"
            metrics = self.state.metrics
            metrics.inc("autarky_requests_total", endpoint=endpoint, status=record["status"])
            metrics.observe(
                "autarky_request_latency_seconds", time.perf_counter() - started, endpoint=endpoint
            )
            if path.startswith(API_PREFIXES):
                self.state.settings.audit.write(record)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is over the limit (declared or as read)."""
        limit = self.state.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        chunks, size, too_big = [], 0, declared is not None and declared.isdigit() and int(declared) > limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            size += len(message.get("body", b""))
            too_big = too_big or size > limit
            if not too_big:
                chunks.append(message.get("body", b""))
            if not message.get("more_body", False) or size > DRAIN_FACTOR * limit:
                break
        return None if too_big else b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the app the body already read, then passes through (for disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
