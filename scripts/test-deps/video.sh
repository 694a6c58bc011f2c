#!/usr/bin/env bash
# Install the real video servers' parts for the watcher's source tests (tests/test_watch_sources.py):
# Debian's GStreamer RTSP server, driven by Debian's own /usr/bin/python3 through python3-gi (a
# virtualenv does not see gi), with the plugins that demux the test AVI and MP4 and packetise their
# JPEG and H.264 frames (all in -good). The HTTP MJPEG camera is a small Python server (tests/video_servers.py) and needs
# nothing. Idempotent; `apt-get update` runs only when a package is missing.
set -euo pipefail

packages=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps/video: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
