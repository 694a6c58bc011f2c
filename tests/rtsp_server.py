"""A real RTSP server for the watcher's tests: Debian's GStreamer RTSP server (gst-rtsp-server,
through python3-gi) serving an MJPEG AVI as RTP JPEG or an H.264 MP4 as RTP H.264, at the file's
own pace, one pipeline per client from the file's start. Run with Debian's /usr/bin/python3 (a
virtualenv does not see gi):

    /usr/bin/python3 tests/rtsp_server.py --video door.avi --port 8554 --mount /door

It prints ``ready`` once it listens and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True, help="an MJPEG AVI or an H.264 MP4")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/stream")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.video.replace("\\", "\\\\").replace('"', '\\"')
    if args.video.lower().endswith(".mp4"):
        # gstreamer1.0-plugins-good only; the parameter sets travel in the SDP. rtph264pay's
        # config-interval=-1 repeats them before every slice of a key frame, and FFmpeg then
        # decodes each slice of the test video's two-slice key frames as a picture of its own.
        payload = "qtdemux ! rtph264pay name=pay0 pt=96"
    else:
        payload = "avidemux ! jpegparse ! rtpjpegpay name=pay0 pt=26"
    factory.set_launch(f'( filesrc location="{location}" ! {payload} )')
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
