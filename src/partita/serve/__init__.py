"""``partita serve``: a local web explorer. Drop a MIDI file in the page and see its pianoroll,
hear it, read its likely composers, find similar pieces of an index, see its place on the corpus
map, and continue it with the shipped transformer; every result can be downloaded.

::

    from partita.serve import create_app, run
    app = create_app(index="piano")            # an ASGI app (FastAPI): mount it, or test it
    run(host="127.0.0.1", port=8000)           # what `partita serve` does

The page and its scripts ship in the package (``static/``) and load nothing from the network.
The API is described at ``/api`` (and ``/openapi.json``). The server calls the library's own
functions (``partita.io``, ``partita.search``, ``partita.generation``, ``partita.viz``), loads each
model once, and runs model calls off the event loop in two bounded queues (``core.ModelQueue``):
the page's quick calls and generation. It answers only to its own host names, refuses requests
from other origins, and needs a token on an address other machines reach (``app._Guard``);
docs/serve.md is the user's manual.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = ["create_app", "run"]


def create_app(**options: Any):
    """The FastAPI app (``partita.serve.app.create_app``)."""
    from partita.serve.app import create_app as _create

    return _create(**options)


def run(host: str = "127.0.0.1", port: int = 8000, *, announce: Optional[Callable[[str], None]] = None,
        log_level: str = "warning", **options: Any) -> None:
    """Serve the explorer until Ctrl-C (or SIGTERM): binds ``host:port`` first (``port=0``: a free
    one), calls ``announce(url)`` (with ``?token=`` when a token is set: opening it logs the
    browser in), then runs uvicorn on that socket. ``options``: ``create_app``'s (``token``
    and the Explorer's)."""
    import socket

    import uvicorn

    from partita.errors import PartitaError

    app = create_app(host=host, **options)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        app.state.explorer.close()
        raise PartitaError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if announce is not None:
        token = options.get("token")
        announce(f"http://{shown}:{bound}/" + (f"?token={token}" if token else ""))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.explorer.close()
        sock.close()
