#!/bin/sh
# System tools the test suite needs beyond Python: a real OpenSSH server and rsync (SSH delivery
# tests), qemu-user-static + mmdebstrap + arch-test (the emulated-aarch64 test).
#   tests/prereqs.sh            check; print the one command to run when something is missing
#   tests/prereqs.sh --install  install what is missing with apt-get (root or sudo)
PKGS=""
{ command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; } || PKGS="$PKGS openssh-server"
command -v rsync >/dev/null || PKGS="$PKGS rsync"
command -v qemu-aarch64-static >/dev/null || PKGS="$PKGS qemu-user-static"
{ command -v mmdebstrap >/dev/null || [ -x /usr/bin/mmdebstrap ]; } || PKGS="$PKGS mmdebstrap"
{ command -v arch-test >/dev/null || [ -x /usr/bin/arch-test ]; } || PKGS="$PKGS arch-test"
[ -z "$PKGS" ] && exit 0
if [ "${1:-}" = "--install" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q $PKGS >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $PKGS >/dev/null; } || {
    echo "error: could not install$PKGS with apt-get; install them by hand" >&2; exit 1; }
  exit 0
fi
echo "error: the tests need$PKGS; install with: sudo apt-get install -y$PKGS   (or: sudo tests/prereqs.sh --install)" >&2
exit 1
