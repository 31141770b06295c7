#!/usr/bin/env bash
# open3d's wheel links against libusb-1.0 (a system library pip cannot provide).
# Install it when we are root with apt; otherwise say exactly what to run.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing libusb-1.0-0 (needed by open3d)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
else
  echo "error: open3d needs the system library libusb-1.0. Install it with:" >&2
  echo "  sudo apt-get install -y libusb-1.0-0     (Debian/Ubuntu)" >&2
  echo "  sudo dnf install -y libusb1              (Fedora/RHEL)" >&2
  exit 1
fi
