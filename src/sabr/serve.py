"""``sabr serve``: the web export's folder over HTTP on this machine (``http.server`` with the MIME types of
ES modules and WebAssembly), so that the browser grants the page a camera (it needs ``localhost`` or HTTPS).

Outside :mod:`sabr.export` on purpose: serving files needs neither torch nor the model code."""

from __future__ import annotations

import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .errors import SabrError
from .manifest import MANIFEST, Manifest

log = logging.getLogger(__name__)

#: What the page's files are served as (browsers refuse ES modules and streamed wasm of another type).
MIME_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
              ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")  # a new export is picked up on reload
        # cross-origin isolation: the page's clock (its per-frame latency) ticks in microseconds, not 0.1 ms
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def site_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for a site written by ``sabr export --format web``.

    Args:
        folder: the site folder (it must hold the export's ``.sabr-manifest.json``).
        host: the address to listen on (default: this machine only).
        port: the TCP port (0: any free port; ``server.server_address`` tells which).

    Raises:
        SabrError: ``folder`` is not a sabr site, or the port cannot be opened.
    """
    folder = Path(folder)
    if not Manifest.is_sabr_folder(folder, "site"):
        raise SabrError(f"{folder} is not a site written by sabr (no site {MANIFEST}); write one with `sabr export "
                        "--run RUN --format web --out FOLDER` and serve that folder.")
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise SabrError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port.") from None


def site_url(server: ThreadingHTTPServer) -> str:
    """The address to open in the browser (``localhost`` for this machine: the camera is allowed there)."""
    host, port = server.server_address[:2]
    return f"http://{'localhost' if host == '127.0.0.1' else host}:{port}/"


def serve_until_interrupted(server: ThreadingHTTPServer) -> None:
    """Serve until Ctrl+C, then close the server."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``folder`` (see :func:`site_server`) until interrupted (Ctrl+C)."""
    server = site_server(folder, host, port)
    log.info("serving %s at %s (Ctrl+C stops)", folder, site_url(server))
    serve_until_interrupted(server)
