"""The baseline of bench/gpu_commands.py: what a user would run with HF transformers + PEFT alone.

One case per process (peak memory per case), printed as one ``RESULT {json}`` line:

    python3 bench/hf_peft_baseline.py train llama-8b 4 2048 full 10   # shape B S checkpointing steps
    python3 bench/hf_peft_baseline.py qlora MODEL_DIR 4 2048 full 10   # a saved model; B S checkpointing steps
    python3 bench/hf_peft_baseline.py generate llama-1b 64 128 256     # shape prompts prompt_len new

Training: random-init weights of the real shape (throughput does not depend on weight values), bf16,
SDPA attention, PEFT LoRA r=16 alpha=32 dropout 0 on q,k,v,o,gate,up,down (adapter weights fp32,
PEFT's default), HF's gradient checkpointing when asked (non-reentrant), fused AdamW, the model's own
loss (``model(input_ids, labels).loss``) on random tokens; 2 warm-up steps, then the mean of the
timed steps; peak = ``torch.cuda.max_memory_allocated`` over the steps, the weights included.
QLoRA: the saved model directory loaded by ``from_pretrained`` with bitsandbytes' 4-bit NF4 (double
quantization, bf16 compute: ``BitsAndBytesConfig``), then PEFT's recipe ``prepare_model_for_kbit_training``
(norms, embeddings and head in fp32; HF's non-reentrant checkpointing when asked) and the same LoRA; steps
and timing as for training.
Generation: ``model.generate`` on left-padded prompts, one batch, sampling at temperature 0.7 and
top-p 0.9, every row ``new`` tokens (``min_new_tokens``); time from the tokenized batch to the result.
"""

from __future__ import annotations

import json
import sys
import time

import torch

SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_model(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def train(shape: str, B: int, S: int, ckpt: str, steps: int, model_dir: str | None = None) -> dict:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    if model_dir is None:
        model = get_peft_model(random_model(shape), lora)
        if ckpt == "full":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        vocab, method = SHAPES[shape]["vocab_size"], "lora"
    else:   # QLoRA as PEFT documents it: bitsandbytes NF4 at load, prepare_model_for_kbit_training, LoRA
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        base = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                    device_map={"": 0}, attn_implementation="sdpa")
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=ckpt == "full",
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, lora)
        vocab, method = base.config.vocab_size, "qlora"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    x = torch.randint(0, vocab, (B, S), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps - 2):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / (steps - 2)
    return dict(side="hf", case="train", method=method, shape=shape, B=B, S=S, ckpt=ckpt, tok_s=round(B * S / dt),
                step_s=round(dt, 4), peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2))


def generate(shape: str, n: int, prompt_len: int, new: int) -> dict:
    model = random_model(shape).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(prompt_len // 2, prompt_len + 1, (n,), generator=g).tolist()
    ids = torch.zeros(n, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, length in enumerate(lengths):   # left-padded, as generate() needs
        ids[i, -length:] = torch.randint(1, 49152, (length,), generator=g)
        mask[i, -length:] = 1
    kw = dict(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    with torch.inference_mode():
        model.generate(input_ids=ids[:2].cuda(), attention_mask=mask[:2].cuda(), **{**kw, "max_new_tokens": 4,
                                                                                    "min_new_tokens": 4})
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    made = int((out.shape[1] - ids.shape[1]) * n)
    return dict(side="hf", case="generate", shape=shape, prompts=n, new=new, tokens=made, seconds=round(dt, 3),
                tok_s=round(made / dt))


if __name__ == "__main__":
    kind, shape, *rest = sys.argv[1:]
    if kind == "train":
        result = train(shape, int(rest[0]), int(rest[1]), rest[2], int(rest[3]))
    elif kind == "qlora":   # shape is the saved model's directory; reported under its folder name
        result = train(shape.rstrip("/").rsplit("/", 1)[-1], int(rest[0]), int(rest[1]), rest[2], int(rest[3]),
                       model_dir=shape)
    else:
        result = generate(shape, int(rest[0]), int(rest[1]), int(rest[2]))
    print("RESULT " + json.dumps(result), flush=True)
