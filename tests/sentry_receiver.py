"""A local Sentry ingestion endpoint for tests: it receives the real envelopes sentry-sdk sends.

sentry-sdk POSTs envelopes (gzip-compressed) to ``/api/<project>/envelope/``; this server keeps
each one, decoded, and answers 200. ``delay_s`` makes every answer slow (to test flushing).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_envelope(raw: bytes) -> tuple[dict, list[tuple[dict, bytes]]]:
    """Envelope header and [(item header, payload)] (sentry's envelope format)."""
    header_line, _, rest = raw.partition(b"\n")
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item = json.loads(item_line)
        if "length" in item:
            payload, rest = rest[: item["length"]], rest[item["length"] :]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, payload))
    return json.loads(header_line), items


class SentryReceiver:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.envelopes: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    receiver.envelopes.append(body)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> SentryReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def dsn(self, key: str) -> str:
        return f"http://{key}@127.0.0.1:{self.port}/1"

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(self.envelopes)

    def events(self) -> list[dict]:
        """Every error event received (items of type "event")."""
        with self._lock:
            envelopes = list(self.envelopes)
        found = []
        for raw in envelopes:
            _, items = parse_envelope(raw)
            found += [json.loads(payload) for item, payload in items if item.get("type") == "event"]
        return found

    def wait_for_events(self, n: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if len(events) >= n or time.monotonic() > deadline:
                return events
            time.sleep(0.05)
