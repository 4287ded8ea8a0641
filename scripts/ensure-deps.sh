#!/usr/bin/env bash
# Installs the system packages supernode's build and tests need, when missing.
# Called by scripts/run.sh and scripts/test.sh, so both work on a fresh Debian 12 machine
# with only the Rust toolchain.
set -euo pipefail

# command -> Debian package that provides it
declare -A need=(
  [cmake]=cmake           # builds the bundled libopus (opus crate)
  [pkg-config]=pkg-config
  [sipp]=sip-tester       # real SIP peer in the integration tests
  [baresip]=baresip       # real phone (UA) in the integration tests
  [turnutils_uclient]=coturn  # coturn's TURN test clients (uclient, peer) in the relay tests
  [chromium]=chromium     # headless browser for the admin UI test (admin_browser.rs)
  [chromedriver]=chromium-driver  # WebDriver server that drives it
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-deps: need root to apt-get install ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
