"""What stands in front of `har serve`'s app. ASGI middleware, what a request must be before the app sees it:

- `HostCheck`: the Host header names this server (an IP address, or one of the allowed names,
  judged by starlette's TrustedHostMiddleware): a web page elsewhere cannot drive a server on
  127.0.0.1 through DNS rebinding (400).
- `BodyLimit`: a body over the limit gets 413 as soon as it is known (its Content-Length, or the
  bytes counted as they arrive), before anything is parsed or stored.
And beneath them, for the connections themselves, `connection_protocol`: uvicorn's h11 connection
with a deadline for a request's headers and a bound on the connections one address holds.
"""
from __future__ import annotations

import json

HEADER_SECONDS = 10.0  # a connection's request line and headers must arrive within this


def is_address(host: str) -> bool:
    """An IP address, IPv6 in brackets or not."""
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware: the Host header must be an IP address or one of `hosts` (starlette's
    TrustedHostMiddleware judges the names); a DNS-rebinding page names a host of its own (400)."""

    def __init__(self, app, hosts: list[str]):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app, self.names = app, TrustedHostMiddleware(app, allowed_hosts=hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            bare = host.rsplit("]", 1)[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
            if is_address(bare):
                return await self.app(scope, receive, send)
        return await self.names(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 as soon as it is known (its
    Content-Length, or the bytes counted as they arrive), before anything is parsed or stored."""

    def __init__(self, app, limit: int, shown_mb: float):
        self.app, self.limit, self.shown_mb = app, limit, shown_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            return await self._too_large(send)
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # the app is told the client left; the client gets 413
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message):
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not over:
                raise
        if over:
            await self._too_large(send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"upload too large; allowed: up to {self.shown_mb:g} MB "
                                     "(har serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def connection_protocol(per_address: int):
    """uvicorn's h11 connection with what uvicorn lacks for untrusted clients: a request's line and
    headers must arrive within HEADER_SECONDS of the connection opening or of the previous response
    (uvicorn waits for them forever: half-open connections would pile up), and one address holds
    at most `per_address` connections (more are closed at once)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_from: dict[str, int] = {}

    class Connection(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.address = self.client[0] if self.client else "?"
            open_from[self.address] = open_from.get(self.address, 0) + 1
            self.answered = self.cycle
            self.header_timer = None
            if open_from[self.address] > per_address:
                transport.close()
                return
            self.arm()

        def arm(self):
            self.header_timer = self.loop.call_later(HEADER_SECONDS, self.too_slow)

        def too_slow(self):
            if self.cycle is self.answered and not self.transport.is_closing():  # no new request yet
                self.transport.close()

        def handle_events(self):
            super().handle_events()
            if self.cycle is not self.answered and self.header_timer is not None:  # a request's headers came
                self.header_timer.cancel()
                self.header_timer = None

        def on_response_complete(self):
            self.answered = self.cycle        # the request just answered
            super().on_response_complete()    # may start a pipelined request: a new cycle
            if not self.transport.is_closing() and self.cycle is self.answered:
                self.arm()

        def connection_lost(self, exc):
            if self.header_timer is not None:
                self.header_timer.cancel()
            open_from[self.address] -= 1
            if not open_from[self.address]:
                del open_from[self.address]
            super().connection_lost(exc)

    return Connection
