#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with .gpuwt/ carried (bench/gpu_bundle.sh makes it):
#   bash bench/gpu_session.sh tests   every GPU test (those that skip on CPU), the serving and static-decoder
#                                      ones first; logs in $OUT/sanity.txt, $OUT/gpu_tests.log
#   bash bench/gpu_session.sh gen     `acculturate generate --file` 3 times + its first call in fresh processes
#                                      (bench/gpu_commands.py gen:ours firstcall), then batch-1 decoding against
#                                      the weight-read roofline (bench/gpu.py); $OUT/gen.log, commands.jsonl,
#                                      firstcall_cprofile_*.txt, gpu.jsonl, batch1.log
# Each stays well inside a device call's 10 minutes.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpuwt/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD ACCULTURATE_TEST_TOKENIZER=$PWD/.gpuwt/tok BENCH_TOKENIZER=$PWD/.gpuwt/tok \
  PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, liger_kernel, acculturate.decode.static
print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(), transformers.__version__, peft.__version__)" \
  2>&1 | tee "$out/sanity.txt" || exit 1
case "${1:-}" in
  tests)
    timeout 540 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=20 -rA \
      tests/serve/test_batching_gpu.py tests/decode/test_static.py tests/decode/test_slots.py \
      tests/decode/test_kv_attention.py tests/models/test_kernels.py tests/train/test_checkpointing.py \
      tests/adapters/test_lora.py tests/adapters/test_nf4.py tests/adapters/test_qlora.py tests/models/test_varlen.py \
      tests/train/test_loss_chunked.py tests/train/test_memory.py tests/train/test_resume.py tests/train/test_sft.py \
      2>&1 | tee "$out/gpu_tests.log" ;;
  gen)
    BENCH_RUNS=3 BENCH_BUDGET_S=330 timeout 345 python3 bench/gpu_commands.py gen:ours firstcall 2>&1 | tee "$out/gen.log"
    BENCH_BUDGET_S=200 timeout 215 python3 bench/gpu.py --cases '[["gen", 1, true, false], ["gen", 1]]' 2>&1 \
      | tee "$out/batch1.log" ;;
  *) echo "usage: bash bench/gpu_session.sh tests|gen" >&2; exit 2 ;;
esac
