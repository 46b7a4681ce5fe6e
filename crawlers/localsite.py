"""A static folder served on the loopback interface, for crawling local sites (the embedded
sample site, test fixtures) with the same crawler as the web."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class StaticPageHandler(SimpleHTTPRequestHandler):
    """Serves files quietly. An HTML file that is valid UTF-8 is sent as `text/html;
    charset=utf-8`; any other HTML file as bare `text/html`, so the client must find the charset
    in the page itself, as it must for many older Chinese sites."""

    def guess_type(self, path: str | Path) -> str:
        kind = super().guess_type(path)
        if kind == "text/html":
            try:
                Path(path).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                return kind
            return "text/html; charset=utf-8"
        return kind

    def log_message(self, format: str, *args: object) -> None:
        pass


class FolderServer(ThreadingHTTPServer):
    # A crawler opens many connections at once; the default backlog of 5 drops some of them.
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up early (a size limit, a timeout) is not the server's problem


@contextmanager
def serve_folder(path: str | Path) -> Iterator[str]:
    """Serve `path` at an ephemeral port on 127.0.0.1; yields the base URL ("http://127.0.0.1:PORT/")."""
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder to serve at {folder}")
    server = FolderServer(("127.0.0.1", 0), partial(StaticPageHandler, directory=str(folder)))
    # `shutdown` waits for the serving loop to look again: every 0.05 s, not the default 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"serve {folder.name}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
