"""The host end of the Linux network test: GET /payload serves a file, POST /upload records a checksum.

Run as ``python3 -m tests.httppeer ADDRESS PORT PAYLOAD RECORD`` (inside the test's network
namespace for a TAP, on the host's loopback for passt).  Each upload's SHA-256 and length
are appended to RECORD as ``upload <sha256> <bytes>``; RECORD gets ``listening`` once the
socket is bound, so the test knows when to start the guest.
"""

from __future__ import annotations

import hashlib
import http.server
import sys
from pathlib import Path


def serve(address: str, port: int, payload: Path, record: Path) -> None:
    data = payload.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/payload":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with record.open("a") as f:
                f.write(f"upload {hashlib.sha256(body).hexdigest()} {len(body)}\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("httppeer: " + format % args + "\n")

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    with record.open("a") as f:
        f.write("listening\n")
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
