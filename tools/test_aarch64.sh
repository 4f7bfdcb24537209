#!/bin/sh
# The engine's tests for aarch64 (NEON kernels against the scalar code), run under QEMU
# user emulation on an x86 machine. Needs, once:
#   apt-get install -y qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
#   rustup target add aarch64-unknown-linux-gnu
set -e
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --target aarch64-unknown-linux-gnu -p vramlab-isa -p vramlab-engine --profile test "$@"
