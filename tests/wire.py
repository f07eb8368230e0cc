"""What a client really sends to Postgres: a TCP proxy that counts the queries on the wire.

psycopg2 (libpq) sends every statement as one simple-protocol ``Query`` message, its own ``BEGIN``
and ``COMMIT`` included, and waits for the answer: a Query message is one round trip. ``Wire``
sits between the client and the server, forwards every byte both ways, and records the text of
each Query message the client sends. Connections must not use TLS (``sslmode=disable``): the
proxy reads the client's messages.
"""

from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit


class Wire:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = (parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else "") + f"127.0.0.1:{port}"
        query = "&".join(q for q in (parts.query, "sslmode=disable&gssencmode=disable") if q)
        #: The URL to connect through the proxy.
        self.url = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
        self.queries: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="wire-accept", daemon=True).start()

    def clear(self) -> None:
        with self._lock:
            self.queries.clear()

    def taken(self) -> list[str]:
        """The queries sent since the last clear(), in order (whitespace collapsed)."""
        with self._lock:
            return [" ".join(q.split()) for q in self.queries]

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    # -- the proxy -------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._from_client, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def _from_client(self, client, server) -> None:
        buf = b""
        started = False  # the startup message has no type byte; every later message has one
        try:
            while data := client.recv(65536):
                buf += data
                while True:
                    if not started:
                        if len(buf) < 4:
                            break
                        (length,) = struct.unpack("!I", buf[:4])
                        if len(buf) < length:
                            break
                        started = True
                        buf = buf[length:]
                        continue
                    if len(buf) < 5:
                        break
                    kind = buf[:1]
                    (length,) = struct.unpack("!I", buf[1:5])
                    if len(buf) < 1 + length:
                        break
                    if kind == b"Q":  # recorded before it is forwarded: before any answer
                        with self._lock:
                            self.queries.append(buf[5 : 1 + length].rstrip(b"\0").decode("utf-8", "replace"))
                    buf = buf[1 + length :]
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client, server)


def _shut(*sockets) -> None:
    """End both directions of each socket (the other side's pipe thread then stops)."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
