"""``serve(db)``: run the explorer with uvicorn (blocking), or in a background thread for notebooks
and tests (``background=True`` returns a handle with ``.url`` and ``.stop()``)."""
from __future__ import annotations

import logging
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class PublicBindWarning(UserWarning):
    """The explorer was asked to listen on an address other machines can reach."""


@dataclass
class RunningServer:
    url: str
    server: object
    thread: threading.Thread
    explorer: object

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.explorer.thumbs.stop()


def check_bind(host: str, port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InputError(f"port must be a number from 0 to 65535, got {port!r}")
    if host not in LOCAL_HOSTS:
        warnings.warn(f"serving on {host}: anyone who can reach this machine on port {port} can browse the "
                      f"images and run read-only SQL on the database (there is no login)", PublicBindWarning,
                      stacklevel=3)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(db, port: int = 8765, host: str = "127.0.0.1", *, table: str = "images", open_browser: bool = False,
          background: bool = False, warm_thumbnails: bool = True, sql_timeout_s: float = 10.0, quiet: bool = False):
    """Serve the explorer for ``db`` at http://host:port.

    Binds 127.0.0.1 by default: the explorer has no login, so another address warns
    (:class:`PublicBindWarning`). ``background=True`` returns a :class:`RunningServer` at once (port 0
    picks a free port); otherwise blocks until Ctrl-C. ``warm_thumbnails`` makes the grid thumbnails
    of every image in a background thread, so browsing a big table does not wait for decoding.
    """
    import uvicorn

    from .app import build_app
    from .explorer import Explorer

    if not Path(str(db)).exists() and "://" not in str(db):
        raise InputError(f"db: no database at {db}")
    if port == 0:
        port = free_port(host)
    check_bind(host, port)
    explorer = Explorer(db, table, sql_timeout_s=sql_timeout_s)
    app = build_app(explorer)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet or background else "info",
                            access_log=not (quiet or background))
    server = uvicorn.Server(config)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if warm_thumbnails:
        explorer.thumbs.warm(iter_ids(explorer))
    threading.Thread(target=warm_reports, args=(explorer,), name="report-warmup", daemon=True).start()
    if background:
        thread = threading.Thread(target=server.run, name="lance-concepts-serve", daemon=True)
        thread.start()
        wait_started(server, thread)
        return RunningServer(url, server, thread, explorer)
    if not quiet:
        logging.getLogger("lance_concepts").info("serving %s at %s", db, url)
        print(f"lance-concepts explorer for {db} at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    try:
        server.run()
    finally:
        explorer.thumbs.stop()
    return None


def warm_reports(explorer) -> None:
    """Run the default drift and spurious reports once in the background: the first one in a process
    pays for loading and compiling (seconds at a million rows); the user's first click should not."""
    try:
        if explorer.time_columns():
            explorer.drift(explorer.time_columns()[0], "month", [])
        if "label" in explorer.category_columns():
            explorer.spurious("label")
    except Exception:  # noqa: BLE001 (a warm-up only: the page shows the same error when asked)
        pass


def iter_ids(explorer, batch: int = 4096):
    """(id, uri) of every row, read in batches (never the whole table in memory)."""
    for b in explorer.searcher.ds.to_batches(columns=["id", "uri"], batch_size=batch):
        yield from zip(b.column("id").to_pylist(), b.column("uri").to_pylist())


def wait_started(server, thread, timeout: float = 20.0) -> None:
    import time

    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive():
            raise InputError("the explorer could not start (is the port in use?)")
        if time.monotonic() - t0 > timeout:
            raise InputError("the explorer did not start in time")
        time.sleep(0.05)
