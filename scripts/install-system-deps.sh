#!/usr/bin/env bash
# Debian packages the tests need beyond PyPI: docker-compose (validates docker-compose.yml without an engine),
# chromium + its driver (UI tests in a real browser), prometheus (+ promtool; the metrics checks).
# Idempotent; installs only what is missing. Needs root (or sudo) the first time.
# With arguments, installs those packages instead (e.g. `wrk` for the API benchmark).
set -euo pipefail
packages=(docker-compose chromium chromium-driver prometheus)
[ $# -gt 0 ] && packages=("$@")
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
