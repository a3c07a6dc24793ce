#!/usr/bin/env bash
# Creates (once) the Python virtualenv with matrix-nio used by the client tests and prints the
# path of its python on stdout. Safe to run concurrently: test processes and .ci/run share one
# venv under a file lock, and a venv is rebuilt only when requirements.txt changes.
#
# NIO_VENV overrides the location (default $HOME/.cache/myelin-venv-<requirements hash>: checkouts
# with different requirements, e.g. several worktrees on one machine, each get their own venv
# instead of rebuilding a shared one under each other's running tests).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
venv="${NIO_VENV:-$HOME/.cache/myelin-venv-$(sha256sum "$requirements" | cut -c1-12)}"
mkdir -p "$(dirname "$venv")"

exec 9>"$venv.lock"
flock 9

# The stamp records which requirements the venv was built from.
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements-sha256" 2>/dev/null)" == "$want" ]] \
    && "$venv/bin/python" -c 'import nio, prometheus_client, mautrix.appservice, aiosmtpd, nacl.signing' 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi

{
    echo "setting up $venv (matrix-nio, mautrix)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet -r "$requirements"
    "$venv/bin/python" -c 'import nio, prometheus_client, mautrix.appservice, aiosmtpd, nacl.signing'
    echo "$want" > "$venv/.requirements-sha256"
} >&2
echo "$venv/bin/python"
