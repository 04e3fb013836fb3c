import numpy as np
import pytest
import torch

from acculturate.models import ModelLoadError, load, pick_device, pick_dtype
from acculturate.models.loading import resolve


def test_missing_model_names_what_was_tried(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load(tmp_path / "nope")
    assert "nope" in str(e.value) and "smollm2-135m" in str(e.value)


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(tmp_path)


def test_unreadable_gguf_names_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load(bad)


def test_cpu_defaults_to_fp32():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        pick_dtype(torch.device("cpu"), "int3")
    assert pick_device("cpu").type == "cpu"


@pytest.mark.slow
def test_default_model_loads_and_answers(default_model):
    model, tok = default_model
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_hf_directory_loads_the_same_weights(default_model):
    again = load(default_model.path, device="cpu")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.model(x).logits, default_model.model(x).logits)


@pytest.mark.slow
def test_embedded_gemma_loads_with_its_chat_template_and_stops_at_the_turn_end():
    """The second embedded model: joined from its part wheels, given Gemma 3's chat template (its
    GGUF has none) and <end_of_turn> as a stop, so chat-format jobs (adapt) train and answer it."""
    from acculturate.decode import GenerationConfig, generate_chat
    from acculturate.decode.step import eos_token_ids

    loaded = load("gemma3-270m", dtype="bf16")
    model, tokenizer = loaded
    assert model.config.model_type == "gemma3_text"
    # The converted directory carries the template and the stop too: it loads by path the same way.
    by_path = load(loaded.path, dtype="bf16")
    assert by_path.tokenizer.chat_template == tokenizer.chat_template
    assert eos_token_ids(by_path.model, by_path.tokenizer) == eos_token_ids(model, tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in eos_token_ids(model, tokenizer)
    completion = generate_chat(model, tokenizer, [messages], GenerationConfig(max_new_tokens=8))[0]
    assert 0 < completion.completion_tokens <= 8


def test_a_gguf_file_is_parsed_once_while_converting(tmp_path):
    import gguf

    from acculturate.models.loading import gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(1000)])
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    original = gguf.GGUFReader
    with gguf_read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first   # config, weights and tokenizer share one parse
        assert len(first.fields["tokenizer.ggml.tokens"].data) == 1000
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first


def test_loaded_models_take_no_kernels_from_the_hub():
    """transformers with the `kernels` package swaps layers for kernels fetched from the Hub unless told
    not to: offline, or for an unverified kernel repository, training then fails at its first step."""
    assert load("smollm2-135m", device="cpu").model.use_kernels is False
