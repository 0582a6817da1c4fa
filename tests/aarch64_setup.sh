#!/bin/sh
# An emulated aarch64 Python 3.11 for running the Pi script as a Pi would (tests/stages/test_aarch64.py):
# an extract-only Debian bookworm arm64 root (mmdebstrap, no chroot, no binfmt, no mounts), the
# device requirements' aarch64 wheels installed by the host's pip into a folder, and an ARM
# /proc/cpuinfo under the root (qemu -L resolves absolute paths under the root first).
# Built once, cached under $EDGESHRINK_AARCH64_CACHE (default .cache/aarch64) in a folder keyed by
# this recipe; a cached folder is used only when its recorded sha256s still match.
# Prints the ready folder on the last line. Run it as: tests/aarch64_setup.sh
set -eu
cd "$(dirname "$0")/.."
SUITE=bookworm
DEB_PACKAGES=python3.11-minimal,libpython3.11-stdlib,libstdc++6
WHEELS="numpy==1.26.4 ai-edge-litert==2.1.0"   # = the tflite requirements-device.txt pins
MIRROR=${EDGESHRINK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${EDGESHRINK_AARCH64_CACHE:-.cache/aarch64}
PY=${PYTHON:-.venv/bin/python}; [ -x "$PY" ] || PY=python3

for tool in qemu-aarch64-static mmdebstrap; do
  command -v "$tool" >/dev/null || [ -x "/usr/bin/$tool" ] || {
    echo "error: $tool is missing; install with: sudo apt-get install -y qemu-user-static mmdebstrap arch-test" >&2; exit 3; }
done
KEY=$(cat "$0" | sha256sum | cut -c1-16)
DIR="$CACHE/$KEY"
CHECKED="root/usr/bin/python3.11 root/lib/aarch64-linux-gnu/libc.so.6 root/proc/cpuinfo"

verify() {
  [ -f "$DIR/sha256s" ] && (cd "$DIR" && sha256sum --quiet --check sha256s >/dev/null 2>&1)
}
if verify; then echo "$DIR"; exit 0; fi

rm -rf "$DIR" "$DIR.tmp"; mkdir -p "$DIR.tmp"
echo "building the arm64 root and wheels under $DIR (once)" >&2
mmdebstrap --quiet --variant=extract --architectures=arm64 --include="$DEB_PACKAGES" "$SUITE" "$DIR.tmp/root" "$MIRROR" >&2
mkdir -p "$DIR.tmp/root/proc"
cat > "$DIR.tmp/root/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3
Hardware	: QEMU user-mode emulation (EdgeShrink test root; Cortex-A72 as on a Raspberry Pi 4)

CPU
# shellcheck disable=SC2086
"$PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --only-binary=:all: \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
  --target "$DIR.tmp/wheels" $WHEELS >&2
PYTHONPATH="$DIR.tmp/wheels" qemu-aarch64-static -L "$DIR.tmp/root" "$DIR.tmp/root/usr/bin/python3.11" -c \
  "import platform, numpy, ai_edge_litert.interpreter; assert platform.machine() == 'aarch64'" >&2
(cd "$DIR.tmp" && sha256sum $CHECKED $(find wheels -name '*.so' | sort) > sha256s)
mv "$DIR.tmp" "$DIR"
echo "$DIR"
