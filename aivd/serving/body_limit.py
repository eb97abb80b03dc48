"""`BodyLimit`: an ASGI middleware that refuses a request body over the limit while it is being received.

The body is counted as it streams in, before any parser stores it: a client that sends no Content-Length
(chunked) or a false one is cut off at the limit just the same, and a multipart upload is refused before Starlette
has spooled the whole of it to disk.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Connection: close, because the unread rest of the body would otherwise be taken for the next request.
CLOSE = {"connection": "close"}


class BodyTooLarge(HTTPException):
    """Raised from `receive` inside the app. An HTTPException, because FastAPI turns any other exception raised
    while it reads a body into a 400 "error parsing the body"; this one it lets through as the 413 it is."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail, headers=CLOSE)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int, advice: str = "") -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.advice = advice

    def _refusal(self, size: int | None) -> str:
        what = f"request body of {size} bytes" if size is not None else "request body"
        return f"{what} is over the limit of {self.max_body_bytes} bytes" + (f"; {self.advice}" if self.advice else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(self._refusal(int(declared)), scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self._refusal(None))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as refusal:
            if started:  # the app answered before reading the whole body; nothing more can be said
                raise
            await self._too_large(refusal.detail, scope, receive, send)

    @staticmethod
    async def _too_large(reason: str, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": reason}, status_code=413, headers=CLOSE)(scope, receive, send)
