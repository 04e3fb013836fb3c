#!/usr/bin/env bash
# Bundle what the GPU machine (no internet; its image has torch, triton, numpy, sentencepiece, ...
# but not this project's transformers/peft versions) needs for the GPU tests and bench/gpu_commands.py,
# into .gpuwt/ (git-ignored through .git/info/exclude; about 30 MB of the device call's 64 MiB):
#   .gpuwt/whl/  wheels for CPython 3.12 x86-64: transformers and peft at the versions installed here,
#                liger-kernel, and what this transformers needs beyond the image
#   .gpuwt/tok/  the default model's tokenizer files (its 98 MB wheel cannot travel)
# Then, on the device machine, with carry [".gpuwt"]: `bash bench/gpu_session.sh tests` (or gen).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpuwt
grep -qx '/.gpuwt/' .git/info/exclude 2>/dev/null || echo '/.gpuwt/' >> .git/info/exclude
mkdir -p "$out/whl" "$out/tok"
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
# transformers' own needs that the device image lacks or has too old (seen when its import failed there),
# then the server's and its tests' (tests/serve/conftest.py skips the whole folder without fastapi and uvicorn)
needs="huggingface-hub httpx2 httpcore2 hf-xet kernels tomlkit click regex anyio idna h11 truststore
  fastapi starlette uvicorn pydantic pydantic-core annotated-types typing-inspection sqlalchemy greenlet
  openai distro jiter sniffio python-multipart opentelemetry-api typing-extensions"
specs="transformers==$(version transformers) peft==$(version peft) liger-kernel==0.8.5"
for name in $needs; do specs="$specs $name==$(version "$name")"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$out/whl" $specs
.venv/bin/python - "$out/tok" <<'PY'
import shutil, sys
from pathlib import Path
from acculturate.models.loading import embedded_gguf, gguf_to_hf_dir
src = gguf_to_hf_dir(embedded_gguf("smollm2-135m"))
for f in src.iterdir():
    if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
        shutil.copy(f, Path(sys.argv[1]) / f.name)
PY
du -sh "$out/whl" "$out/tok"
