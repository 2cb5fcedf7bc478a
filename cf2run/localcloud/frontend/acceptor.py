"""Many HTTP listeners, one thread: connections to every listening socket accepted by one selector.

`socketserver`'s `serve_forever` gives each server a thread that wakes every `poll_interval`
(0.25 s) to look for a shutdown request: a local Cloud Run holding a thousand service URLs had a
thousand such threads, 0.08 CPU-s per second while nothing happened. Here one thread blocks in
the selector (epoll) over all the listening sockets, and costs nothing while no one connects; a
listening socket that has a connection waiting has its server accept it and serve it in a
thread of its own, as `ThreadingHTTPServer` does. Each URL keeps its own port and its own
server (handler, open connections), so stopping one is what it was:

    acceptor = Acceptor("cloudrun-urls")
    listener = Listener(acceptor, Handler, port=0)   # http://127.0.0.1:PORT, accepting now
    listener.stop()                                  # its port closed, its idle connections ended
    acceptor.close()                                 # the thread ends (a later Listener starts it again)
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler

from cf2run.localcloud.iam.metadata import TrackingServer


class Acceptor:
    """One thread accepting the connections of every added server (started with the first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def add(self, server: TrackingServer) -> None:
        """Accept `server`'s connections from now on (its socket is made non-blocking: a connection
        that went away before it was accepted must not hold the thread)."""
        server.socket.setblocking(False)
        with self._lock:
            if self._selector is None:
                self._start()
            assert self._selector is not None
            self._selector.register(server.socket, selectors.EVENT_READ, server)

    def remove(self, server: TrackingServer) -> None:
        """Accept no more of `server`'s connections (before its socket is closed)."""
        with self._lock, contextlib.suppress(KeyError, ValueError):
            if self._selector is not None:
                self._selector.unregister(server.socket)

    def close(self) -> None:
        """End the thread (the servers still added accept nothing more)."""
        with self._lock:
            selector, wake, thread = self._selector, self._wake, self._thread
            self._selector = self._wake = self._thread = None
        if selector is None or wake is None or thread is None:
            return
        wake[1].send(b"x")
        thread.join()
        selector.close()
        for end in wake:
            end.close()

    def _start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake = socket.socketpair()
        self._selector.register(self._wake[0], selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._accept, args=(self._selector,), name=self.name,
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _accept(selector: selectors.BaseSelector) -> None:
        while True:
            for key, _ in selector.select():
                server = key.data
                if server is None:  # woken by close()
                    return
                # accept() and hand the connection to a thread of its own; an OSError (the socket
                # was closed meanwhile, or the connection is gone) is ignored there
                server._handle_request_noblock()


class Listener:
    """A `TrackingServer` for `handler` on 127.0.0.1:`port` whose connections `acceptor` accepts."""

    def __init__(self, acceptor: Acceptor, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = TrackingServer(("127.0.0.1", port), handler)
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = acceptor
        acceptor.add(self.server)

    def stop(self) -> None:
        """Stop accepting requests, end idle connections and close the socket (requests in flight
        may finish)."""
        self._acceptor.remove(self.server)
        self.server.end_connections()
        self.server.server_close()
