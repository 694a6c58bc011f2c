"""A real HTTP MJPEG camera for the watcher's tests: ``GET /`` answers
``multipart/x-mixed-replace`` with one JPEG part per frame of an MJPEG AVI, paced at the file's
frame rate and looping like a camera that never ends (each client from the file's start):

    python tests/mjpeg_server.py --video door.avi --port 8080

It prints ``ready`` once it listens and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av

BOUNDARY = "facematchframe"


def read_jpegs(path: str) -> tuple[list[bytes], float]:
    """Every frame of an MJPEG AVI as the JPEG it stores, and the frame rate."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 10)
        jpegs = [bytes(p) for p in container.demux(stream) if p.size]
    return jpegs, fps


def handler(jpegs: list[bytes], fps: float) -> type[BaseHTTPRequestHandler]:
    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            start = time.monotonic()
            n = 0
            try:
                while True:
                    jpeg = jpegs[n % len(jpegs)]
                    head = (
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(jpeg)}\r\n\r\n"
                    )
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    n += 1
                    time.sleep(max(0.0, start + n / fps - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    return Camera


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True, help="an MJPEG AVI")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    jpegs, fps = read_jpegs(args.video)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(jpegs, fps))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
