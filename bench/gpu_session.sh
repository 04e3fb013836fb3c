#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with .gpuwt/ carried (bench/gpu_bundle.sh makes it):
#   bash bench/gpu_session.sh MODE [MODE ...]   each mode in turn, logs and results in $OUT:
#     decoding-tests  the GPU tests of decoding and serving (start-up warm-up, static and slot decoders,
#                     attention kernel, the server's batcher); $OUT/gpu_tests_decoding.log
#     tests           every GPU test (those that skip on CPU); $OUT/gpu_tests.log
#     gen             `acculturate generate --file` 3 times, then its first call in fresh processes with each
#                     GPU start-up (bench/gpu_commands.py gen:ours firstcall); $OUT/gen.log, commands.jsonl,
#                     firstcall_cprofile_*.txt
#     gen-command     `acculturate generate --file` 3 times, nothing else (bench/gpu_commands.py gen:ours)
#     sampler         the top-p sampler alone, before and after sampling in order of score (bench/sampler.py);
#                     $OUT/sampler.log, sampler.jsonl
#     batch1          batch-1 decoding against the weight-read roofline (bench/gpu.py); $OUT/batch1.log, gpu.jsonl
#     8bauto20        `acculturate train`, 8B LoRA with auto checkpointing under a 20 GiB budget, 3 runs
#     offload-tests   the GPU tests of activation checkpointing (offloaded inputs included); $OUT/gpu_tests_checkpointing.log
#     8boffload       `acculturate train`, 8B LoRA with checkpointed inputs in host memory: 29 layers checkpointed,
#                     and auto under a 20 GiB budget, 3 runs each
#     8boffload20     the same with 29 layers checkpointed against HF + PEFT (full checkpointing), 3 runs a side
# Each mode's time limit (seconds) can be set with LIMIT_<mode, '-' as '_'>, e.g. LIMIT_tests=300.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpuwt/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD ACCULTURATE_TEST_TOKENIZER=$PWD/.gpuwt/tok BENCH_TOKENIZER=$PWD/.gpuwt/tok \
  PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, liger_kernel, acculturate.decode.static
print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(), transformers.__version__, peft.__version__)" \
  2>&1 | tee "$out/sanity.txt" || exit 1
limit() { local v="LIMIT_${1//-/_}"; echo "${!v:-$2}"; }
decoding_tests="tests/models/test_gpu_start.py tests/decode/test_warm_up.py tests/serve/test_batching_gpu.py tests/decode/test_static.py
  tests/decode/test_slots.py tests/decode/test_kv_attention.py"
[ $# -gt 0 ] || { echo "usage: bash bench/gpu_session.sh decoding-tests|tests|gen|gen-command|sampler|batch1|8bauto20|offload-tests|8boffload|8boffload20 ..." >&2; exit 2; }
for mode in "$@"; do
  case "$mode" in
    decoding-tests)
      timeout "$(limit "$mode" 240)" python3 -m pytest -q -m gpu -p no:cacheprovider --durations=15 -rA $decoding_tests \
        2>&1 | tee "$out/gpu_tests_decoding.log" ;;
    tests)
      timeout "$(limit "$mode" 540)" python3 -m pytest -q -m gpu -p no:cacheprovider --durations=20 -rA $decoding_tests \
        tests/models/test_kernels.py tests/train/test_checkpointing.py tests/adapters/test_lora.py \
        tests/adapters/test_nf4.py tests/adapters/test_qlora.py tests/models/test_varlen.py tests/train/test_loss_chunked.py \
        tests/train/test_memory.py tests/train/test_resume.py tests/train/test_sft.py 2>&1 | tee "$out/gpu_tests.log" ;;
    gen)
      t=$(limit "$mode" 345)
      BENCH_RUNS=3 BENCH_BUDGET_S=$((t - 15)) timeout "$t" python3 bench/gpu_commands.py gen:ours firstcall 2>&1 \
        | tee "$out/gen.log" ;;
    gen-command)
      t=$(limit "$mode" 160)
      BENCH_RUNS=3 BENCH_BUDGET_S=$((t - 15)) timeout "$t" python3 bench/gpu_commands.py gen:ours 2>&1 \
        | tee "$out/gen_command.log" ;;
    sampler)
      timeout "$(limit "$mode" 60)" python3 bench/sampler.py 2>&1 | tee "$out/sampler.log" ;;
    batch1)
      t=$(limit "$mode" 215)
      BENCH_BUDGET_S=$((t - 15)) timeout "$t" python3 bench/gpu.py --cases '[["gen", 1, true, false], ["gen", 1]]' 2>&1 \
        | tee "$out/batch1.log" ;;
    8bauto20)
      t=$(limit "$mode" 400)
      BENCH_RUNS=3 BENCH_BUDGET_S=$((t - 60)) timeout "$t" python3 bench/gpu_commands.py 8bauto20 2>&1 \
        | tee "$out/train8b.log" ;;
    offload-tests)
      timeout "$(limit "$mode" 120)" python3 -m pytest -q -m gpu -p no:cacheprovider -rA tests/train/test_checkpointing.py \
        2>&1 | tee "$out/gpu_tests_checkpointing.log" ;;
    8boffload|8boffload20)
      t=$(limit "$mode" 300)
      BENCH_RUNS=3 BENCH_BUDGET_S=$((t - 60)) timeout "$t" python3 bench/gpu_commands.py "$mode" 2>&1 \
        | tee "$out/train_$mode.log" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
done
