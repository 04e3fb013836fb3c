#!/usr/bin/env bash
# A small hyperparameter study on the embedded default model, on CPU: 8 LoRA trials on 160 UK BLEnD
# questions, then the best and the default config scored on 32 held-apart questions.
# Interrupt it at any time (Ctrl-C or kill) and run it again: it continues the study.
set -euo pipefail
cd "$(dirname "$0")/../.."
acculturate tune acculturate/configs/tune/smollm2-135m_lora.yaml --set output_dir=examples/tune/runs "$@"
echo "Open examples/tune/runs/tune-uk-lora/report.html; train the winner with:"
echo "  acculturate train examples/tune/runs/tune-uk-lora/best.yaml"
