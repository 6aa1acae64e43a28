"""The FastAPI app of ``partita serve``: the JSON API over :class:`partita.serve.core.Explorer`
and the one page (``static/``), documented at ``/api`` (an offline page over ``/openapi.json``).

Every error is JSON ``{"error": code, "message": one line}`` (``reason`` too for a MIDI file that
cannot be used), never a traceback: 400 bad settings, 404 unknown id, 413 too large, 422 not
usable MIDI or an invalid request, 501 no audio here, 503 busy (with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import FastAPI, Query, Request
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from partita.errors import PartitaError
from partita.serve.core import (MAX_CANDIDATES, MAX_PIECE_TRACKS, MAX_SAMPLES, MAX_SECONDS, MAX_BARS, MAX_TEMPERATURE, MAX_TOKENS,
                                 Explorer, QueueFull, error_body, release_memory)

log = logging.getLogger("partita.serve")

STATIC = Path(str(resources.files("partita.serve") / "static"))
#: Bodies of requests other than an upload: a continuation's settings are a few hundred bytes.
MAX_OTHER_BODY = 64 * 1024


class TooLarge(PartitaError):
    pass


#: A request's settings are checked here, at the door, before anything is queued: strict types
#: (``true`` is not a number, ``"3"`` is not 3), finite numbers, every number within its range,
#: strings of bounded length; anything else is a 422 with one line.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
SEED_MAX = 2**63 - 1
Name = Field(None, max_length=100, description="auto, or one of GET /api/info's models.")


#: The range this server takes for each sampling option; the option's type and help are
#: ``SamplingConfig``'s (one list of options for the CLI, the API and Python).
SAMPLING_BOUNDS = {
    "seconds": dict(gt=0, le=MAX_SECONDS), "bars": dict(ge=1, le=MAX_BARS), "max_new_tokens": dict(ge=1, le=MAX_TOKENS),
    "temperature": dict(ge=0, le=MAX_TEMPERATURE), "top_k": dict(ge=1, le=1_000_000), "top_p": dict(gt=0, le=1),
    "min_p": dict(ge=0, lt=1), "seed": dict(ge=0, le=SEED_MAX), "max_pause": dict(gt=0, le=MAX_SECONDS),
    "allow_early_end": {},
}
_TYPES = {"float": float, "int": int, "bool": bool, "Optional[int]": int, "Optional[float]": float}


def sampling_fields(*names: str, notes: Optional[dict] = None) -> dict:
    """Pydantic fields for ``SamplingConfig``'s ``names``: its type and help, this server's
    bounds; None (not sent) leaves the model's ``generation.json`` and the config's default."""
    from partita.generation.sampling import SamplingConfig

    notes = notes or {}
    out = {}
    for name in names:
        f = SamplingConfig.__dataclass_fields__[name]
        kind = _TYPES[str(f.type)]
        text = SamplingConfig.help(name) + (f" {notes[name]}" if name in notes else "")
        out[name] = (Optional[kind], Field(None, description=text, **SAMPLING_BOUNDS[name]))
    return out


_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "seed")

ContinueSettings = create_model(
    "ContinueSettings", __config__=STRICT,
    __doc__="Sampling settings of a continuation (``partita generate``'s options; ``SamplingConfig`` fields).",
    n=(int, Field(1, ge=1, le=MAX_SAMPLES, description=f"How many continuations (1-{MAX_SAMPLES}).")),
    **sampling_fields("seconds", "bars", "max_new_tokens", "max_pause", "allow_early_end", *_SAMPLING,
                      notes={"seconds": f"Default 10 when no length is given; at most {MAX_SECONDS:g} here."}),
    prompt_seconds=(Optional[float], Field(None, gt=0, description="Continue from this many seconds into the piece (default: its end; at most its length).")),
    model=(Optional[str], Name),
)

InfillSettings = create_model(
    "InfillSettings", __config__=STRICT,
    __doc__="The span to regenerate and the sampling settings (``partita.generation.infill``'s).",
    bars=(Optional[str], Field(None, max_length=40, description='Bars to regenerate, 1-based and inclusive, within the piece: "9-12".')),
    seconds=(Optional[str], Field(None, max_length=40, description='Or the bars a time range touches: "10-20".')),
    n=(int, Field(1, ge=1, le=MAX_SAMPLES, description=f"How many versions (1-{MAX_SAMPLES}).")),
    candidates=(int, Field(1, ge=1, le=MAX_CANDIDATES, description=f"Middles sampled per version, the one that leads best into the music after the span kept (1-{MAX_CANDIDATES}).")),
    **sampling_fields(*_SAMPLING),
    model=(Optional[str], Name),
)


AccompanySettings = create_model(
    "AccompanySettings", __config__=STRICT,
    __doc__="The style and settings of an accompaniment (``partita accompany``'s options).",
    style=(Literal["pop", "folk", "chorale"], Field("pop", description="pop (the chords a tagger learnt from POP909, played as a piano part; with model, an accompaniment model's piano part on them), folk (diatonic chords by a rule) or chorale (alto, tenor and bass under a soprano).")),
    pattern=(Optional[Literal["block", "broken", "arpeggio"]], Field(None, description="How the chords are played (pop without a model, folk): struck together, broken one note a beat, or a bass and eighths above it; default arpeggio (pop), block (folk).")),
    chords=(Optional[str], Field(None, max_length=200, description='Impose a progression, one chord per bar, repeated: "C G Am F" (pop and folk).')),
    melody_track=(Optional[int], Field(None, ge=1, le=MAX_PIECE_TRACKS, description="The melody's track, 1-based (default: a track named MELODY, else the highest track of single notes).")),
    density=(Optional[float], Field(None, gt=0, le=16, description="Notes a beat to aim at (pop and folk).")),
    n=(int, Field(1, ge=1, le=MAX_SAMPLES, description=f"How many versions (1-{MAX_SAMPLES}).")),
    **sampling_fields("temperature", "top_p", "seed"),
    model=(Optional[str], Name),
)


class _BodyLimit:
    """ASGI middleware: a request body over the limit (the upload limit on POST /api/pieces,
    64 KiB elsewhere) is refused with 413, by its Content-Length before reading, or while it
    streams in.

    A 413 goes out while the client may still be sending: closing the socket with its body
    unread would make the kernel reset the connection and the client lose the answer. So the
    answer's bytes are sent, then up to ``DRAIN_LIMIT`` more bytes of the body are read and
    dropped for at most ``DRAIN_SECONDS`` (a body a little over the limit reaches its end, and
    its client reads the answer cleanly), and the connection is closed: a client sending
    hundreds of MiB holds no socket, buffer or worker of the server."""

    DRAIN_LIMIT = 2**20
    DRAIN_SECONDS = 5.0

    def __init__(self, app, max_upload: int):
        self.app, self.max_upload = app, max_upload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.max_upload if scope["path"].rstrip("/") == "/api/pieces" else MAX_OTHER_BODY
        seen, body_done, status = 0, False, None

        # A client that waits for "100 Continue" sends no body once the answer has started.
        expects = dict(scope.get("headers") or []).get(b"expect", b"").lower() == b"100-continue"

        async def drain_then_end():
            async def drain() -> bool:
                drained = 0
                while not body_done and not expects and drained < self.DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] != "http.request":
                        return False  # the client is gone: nothing more to send
                    drained += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
                return True

            try:
                if not await asyncio.wait_for(drain(), self.DRAIN_SECONDS):
                    return
            except asyncio.TimeoutError:
                pass
            await send({"type": "http.response.body", "body": b""})

        async def send_413_whole(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 413:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif status == 413 and message["type"] == "http.response.body" and not message.get("more_body"):
                await send({**message, "more_body": True})
                return await drain_then_end()
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_json(send_413_whole, 413, _too_large(int(length), limit))

        async def limited():
            nonlocal seen, body_done
            message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body")
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(_too_large(seen, limit)["message"])
            else:
                body_done = True
            return message

        return await self.app(scope, limited, send_413_whole)


#: Headers on every answer: no script but our files, no framing, no sniffing, no referrer, and
#: no reading of our answers by other origins (``<img>``, ``<audio>`` included).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
     b"media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_COOKIE = "partita_token"


def host_name(value: str) -> str:
    """The name of a Host header or an Origin's authority, without its port, lowercase:
    ``[::1]:8000`` -> ``::1``, ``LocalHost:80`` -> ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the server the ``Host`` header names (``null``, an
    opaque origin, never does)."""
    scheme, _, authority = origin.strip().lower().partition("://")
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    strip = lambda a: a[: -len(default)] if default and a.endswith(default) else a  # noqa: E731
    return bool(authority) and strip(authority) == strip(host.strip().lower())


class _Guard:
    """ASGI middleware that keeps other sites and other machines out:

    - the ``Host`` header must name this server (``hosts``: 127.0.0.1, localhost, ::1 and the
      ``--host`` name; None: any, for a wildcard address, where the token guards): a DNS
      rebinding page's requests carry its own name and are refused (400);
    - a request from another origin is refused (403): every state-changing request (POST,
      uploads included) whose ``Sec-Fetch-Site`` is not same-origin/none or whose ``Origin`` is
      not this server, and every API read a cross-site page makes (``<img>``, ``fetch``) other
      than following a link;
    - with a ``token``, every request carries it, as ``Authorization: Bearer TOKEN`` or as the
      cookie that opening ``/?token=TOKEN`` sets (401 otherwise);
    - every answer carries :data:`SECURITY_HEADERS` (a CSP without inline script, DENY framing)."""

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, hosts: Optional[frozenset], token: Optional[str]):
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))

        async def secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, body, extra = refusal
            return await _send_json(secured, status, body, extra)
        if self.token and scope["method"] == "GET" and scope["path"] == "/" and self._query_token(scope):
            # Opening the printed address: the token becomes a same-site-only cookie, and the
            # address bar loses it.
            cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()
            await secured({"type": "http.response.start", "status": 303,
                           "headers": [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0")]})
            return await secured({"type": "http.response.body", "body": b""})
        return await self.app(scope, receive, secured)

    def _query_token(self, scope) -> bool:
        from urllib.parse import parse_qs

        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())

    def refusal(self, scope, headers: dict) -> Optional[tuple]:
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return 400, {"error": "bad_host", "message": f"this server answers to {', '.join(sorted(self.hosts))}, "
                         f"not {host[:60]!r}; open it by one of those names (or start partita serve with --host NAME)"}, []
        method, path = scope["method"], scope["path"]
        site = headers.get("sec-fetch-site", "")
        cross = site in ("cross-site", "same-site")  # another port of localhost is the same site, not the same origin
        origin = headers.get("origin")
        if method not in self.SAFE:
            if cross or (origin is not None and not _same_origin(origin, host)):
                return 403, {"error": "cross_origin", "message": "requests from other sites are refused; use the explorer's own page"}, []
        elif cross and path.startswith("/api/") and headers.get("sec-fetch-mode") != "navigate":
            return 403, {"error": "cross_origin", "message": "other sites may not read this server's answers"}, []
        if self.token and not self._authorized(scope, headers):
            return 401, {"error": "unauthorized", "message": "this server needs its token: open the address partita serve "
                         "printed (with ?token=...), or send Authorization: Bearer TOKEN"}, [(b"www-authenticate", b"Bearer")]
        return None

    def _authorized(self, scope, headers: dict) -> bool:
        want = self.token.encode()
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and secrets.compare_digest(auth[7:].strip().encode(), want):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE and secrets.compare_digest(value.encode(), want):
                return True
        return scope["method"] == "GET" and scope["path"] == "/" and self._query_token(scope)


def _too_large(size: int, limit: int) -> dict:
    return {"error": "too_large", "message": f"the request is over the {limit / 2**20:.3g} MiB limit "
            f"({size / 2**20:.3g} MiB or more); send a smaller MIDI file, or start partita serve with a larger --max-upload-mb"}


async def _send_json(send, status: int, body: dict, headers: list = ()) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


def allowed_hosts(host: str = "127.0.0.1") -> Optional[frozenset]:
    """The names a server listening on ``host`` answers to: the loopback names and ``host``
    itself; None (any name) for a wildcard address (0.0.0.0, ::), where only the token guards."""
    name = host_name(host if not host.count(":") > 1 else f"[{host}]")
    if name in ("0.0.0.0", "::", ""):
        return None
    return LOOPBACK_HOSTS | {name}


def create_app(explorer: Optional[Explorer] = None, *, host: str = "127.0.0.1", token: Optional[str] = None,
               **options: Any) -> FastAPI:
    """The app; ``host``: the address it listens on (its name joins the Host allowlist);
    ``token``: a secret every request must carry (needed when ``host`` is not this machine's
    loopback); ``options`` are :class:`Explorer`'s (index, model, pieces, max_upload_mb,
    workers, queue, keep, audio_seconds) when no ``explorer`` is given."""
    hosts = allowed_hosts(host)
    if token is not None and not token.strip():
        raise PartitaError("the token is empty; give --token a secret of your own")
    if (hosts is None or not hosts <= LOOPBACK_HOSTS) and not token:
        raise PartitaError(f"listening on {host} lets other machines reach the explorer: give it --token SECRET "
                           "(every request must then carry it)")
    ex = explorer if explorer is not None else Explorer(**options)

    @asynccontextmanager
    async def lifespan(app):
        yield
        ex.close()

    app = FastAPI(
        title="partita explorer",
        version=ex.info()["partita"],
        description="Drop a MIDI file; see, hear, attribute it, find similar pieces, place it on the corpus map, continue it.",
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN; /api is ours and offline
        lifespan=lifespan,
    )
    app.state.explorer = ex
    app.add_middleware(_BodyLimit, max_upload=ex.max_upload_bytes)
    app.add_middleware(_Guard, hosts=hosts, token=token)  # added last: runs first

    # ------------------------------------------------------------- errors
    def _json_error(e: BaseException) -> JSONResponse:
        status, body = error_body(e, ex.folder)
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, QueueFull) else None
        if status == 500:
            log.error("internal error", exc_info=e)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(PartitaError)
    async def _partita_error(request: Request, e: PartitaError):
        if isinstance(e, TooLarge):
            return JSONResponse({"error": "too_large", "message": str(e)}, status_code=413)
        return _json_error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
        return JSONResponse({"error": "invalid_request", "message": msg}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 400 and "parsing the body" in str(e.detail):  # JSON Python's parser refuses (a 5,000-digit number)
            return JSONResponse({"error": "invalid_request", "message": "the request body is not JSON this server reads "
                                 "(numbers of at most 4,300 digits)"}, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        return _json_error(e)

    async def run(fn, *args):
        """A model call in the bounded queue, awaited without blocking the event loop."""
        return await asyncio.wrap_future(ex.queue.submit(fn, *args))

    # ------------------------------------------------------------- the page
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api", include_in_schema=False)
    async def api_docs():
        return FileResponse(STATIC / "api.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------- API
    @app.get("/api/info", summary="What this server offers: indexes, models, audio, limits")
    async def info():
        return ex.info()

    @app.post(
        "/api/pieces", status_code=201, summary="Upload a MIDI file (the request body is the file)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "audio/midi": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def upload(request: Request, name: Optional[str] = Query(None, max_length=1000, description="The file's name, to show and to name downloads.")):
        """The body is the MIDI file (``curl --data-binary @piece.mid -H 'Content-Type: audio/midi'
        'http://127.0.0.1:8000/api/pieces?name=piece.mid'``). Checked as ``partita.io.load`` checks
        files (MIDI header, chunks, notes): 422 with the reason otherwise; over the limit: 413."""
        data = await request.body()
        if len(data) > ex.max_upload_bytes:
            raise TooLarge(_too_large(len(data), ex.max_upload_bytes)["message"])
        try:
            piece = await asyncio.to_thread(ex.upload, data, name)
        finally:
            del data
            await asyncio.to_thread(release_memory)
        return piece.public()

    @app.get("/api/pieces/{piece_id}", summary="A piece: notes, length, instruments, links")
    async def piece(piece_id: str):
        return ex.store.get(piece_id).public()

    @app.get("/api/pieces/{piece_id}/notes", summary="Note data for a pianoroll (seconds)")
    async def notes(piece_id: str):
        p = ex.store.get(piece_id)
        body = JSONResponse(await asyncio.to_thread(ex.notes, p))
        await asyncio.to_thread(release_memory)
        return body

    @app.get("/api/pieces/{piece_id}/pianoroll.png", summary="Pianoroll image (partita.viz.pianoroll)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def pianoroll(piece_id: str):
        p = ex.store.get(piece_id)
        return Response(await run(ex.pianoroll, p), media_type="image/png")

    @app.get("/api/pieces/{piece_id}/audio", summary="Audio rendered with the SoundFont (501 when there is none)",
             response_class=Response, responses={200: {"content": {"audio/mpeg": {}, "audio/ogg": {}, "audio/wav": {}}}})
    async def audio(piece_id: str):
        p = ex.store.get(piece_id)
        path, mime = ex.audio_file(p) or await run(ex.audio, p)  # rendered once, then a file (seekable)
        return FileResponse(path, media_type=mime)

    @app.get("/api/pieces/{piece_id}/midi", summary="Download the MIDI file",
             response_class=Response, responses={200: {"content": {"audio/midi": {}}}})
    async def midi(piece_id: str):
        p = ex.store.get(piece_id)
        return FileResponse(p.path, media_type="audio/midi", filename=_midi_name(p.name))

    @app.get("/api/pieces/{piece_id}/attribution", summary="Likely composers with probabilities, or unknown composer")
    async def attribution(piece_id: str, k: int = Query(3, ge=1, le=20), index: Optional[str] = Query(None, max_length=100)):
        p = ex.store.get(piece_id)
        return await run(ex.attribution, p, index, k)

    @app.get("/api/pieces/{piece_id}/similar", summary="The most similar pieces of the index, with links to play them")
    async def similar(piece_id: str, k: int = Query(10, ge=1, le=50), index: Optional[str] = Query(None, max_length=100)):
        p = ex.store.get(piece_id)
        return await run(ex.similar, p, index, k)

    @app.get("/api/pieces/{piece_id}/map", summary="The piece's place on the index's map")
    async def piece_map(piece_id: str, index: Optional[str] = Query(None, max_length=100)):
        p = ex.store.get(piece_id)
        return await run(ex.place, p, index)

    @app.post("/api/pieces/{piece_id}/continue", status_code=202,
              summary="Continue the piece (a job: poll GET /api/jobs/{id} for progress and the new pieces)")
    async def continue_piece(piece_id: str, settings: ContinueSettings):
        p = ex.store.get(piece_id)
        job = ex.start_continuation(p, settings.model_dump())
        return ex.public_job(job)

    @app.post("/api/pieces/{piece_id}/accompany", status_code=202,
              summary="Write an accompaniment under the piece's melody: new tracks, every note of the piece kept (a job, like /continue)")
    async def accompany_piece(piece_id: str, settings: AccompanySettings):
        p = ex.store.get(piece_id)
        job = ex.start_accompany(p, settings.model_dump())
        return ex.public_job(job)

    @app.post("/api/pieces/{piece_id}/infill", status_code=202,
              summary="Regenerate a span of bars of the piece (a job, like /continue; needs a model trained for infilling)")
    async def infill_piece(piece_id: str, settings: InfillSettings):
        p = ex.store.get(piece_id)
        job = ex.start_infill(p, settings.model_dump())
        return ex.public_job(job)

    @app.get("/api/jobs/{job_id}", summary="A job's state, progress and the pieces it made")
    async def job(job_id: str):
        return ex.public_job(ex.job(job_id))

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a job (a queued one never runs; a running one stops at its next token)")
    async def cancel_job(job_id: str):
        return ex.public_job(ex.cancel(ex.job(job_id)))

    @app.get("/api/indexes/{index}/map", summary="Every piece of an index on its 2-D map")
    async def index_map(index: str):
        m = await run(ex.map_points, index)
        return m["json"]

    @app.get("/api/indexes/{index}/pieces/{row}/audio", summary="Audio of an index piece whose file is on this machine",
             response_class=Response, responses={200: {"content": {"audio/mpeg": {}, "audio/ogg": {}, "audio/wav": {}}}})
    async def index_audio(index: str, row: int = FPath(ge=0, le=10**9)):
        data, mime = await run(ex.index_audio, index, row)
        return Response(data, media_type=mime)

    @app.get("/api/indexes/{index}/pieces/{row}/midi", summary="The MIDI file of an index piece on this machine",
             response_class=Response, responses={200: {"content": {"audio/midi": {}}}})
    async def index_midi(index: str, row: int = FPath(ge=0, le=10**9)):
        _, path = await asyncio.to_thread(ex.index_piece, index, row)
        return FileResponse(path, media_type="audio/midi", filename=_midi_name(path.name))

    return app


def _midi_name(name: str) -> str:
    return name if name.lower().endswith((".mid", ".midi")) else f"{name}.mid"
