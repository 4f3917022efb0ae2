#!/usr/bin/env python
"""A loopback HTTP file server for the download tests: serves a folder with Range support, can cut
the first transfer of each file after some bytes (a dropped connection), and logs every request.

    python tests/support/http_file_server.py --root DIR --port-file PORT --log requests.jsonl --cut-after 1000
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cut-after", type=int, default=0, help="first GET of each file stops after N bytes")
    parser.add_argument("--ignore-range", action="store_true", help="answer 200 with the whole file to ranges")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    lock = threading.Lock()
    cut_done: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = (root / self.path.lstrip("/")).resolve()
            range_header = self.headers.get("Range")
            with lock, open(args.log, "a") as f:
                f.write(json.dumps({"path": self.path, "range": range_header}) + "\n")
            if root not in path.parents or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not args.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            with lock:
                cut = args.cut_after and self.path not in cut_done and len(body) > args.cut_after
                if cut:
                    cut_done.add(self.path)
            if cut:
                self.wfile.write(body[: args.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(args.port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
