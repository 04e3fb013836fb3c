"""Vocabulary extension: fertility, BPE tokens added as merges, mean-of-pieces initialisation,
save/reload as an ordinary HF model, and LoRA with the new rows through real PEFT (models/vocab.py,
adapters/token_rows.py)."""

import pytest
import torch

from acculturate.models.vocab import ExtendConfig, extend_vocabulary, fertility, read_new_token_ids, save_extended

JAVANESE = "Lak ana pitakonan sakteruse sing sir mok eruhi utawa ngalami kendala soal produk traveloka."
ENGLISH = "Rewrite the following sentence so that it is in the passive voice: the cat chased the mouse."


class CharTokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t.replace(" ", "")) for t in texts]}


def test_fertility_counts_tokens_per_whitespace_word():
    # 'ab cd' -> 4 tokens / 2 words; 'efg' -> 3 / 1: (4 + 3) / 3
    assert fertility(CharTokenizer(), ["ab cd", "efg"]) == {"tokens": 7, "words": 3, "fertility": round(7 / 3, 4)}
    assert fertility(CharTokenizer(), []) == {"tokens": 0, "words": 0, "fertility": None}


@pytest.mark.parametrize("field, value", [("new_tokens", 0), ("bpe_vocab_size", -1), ("rank", "best")])
def test_extend_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ExtendConfig.{field}"):
        ExtendConfig(**{field: value})


@pytest.fixture(scope="module")
def extended(tmp_path_factory, data_dir):
    """The real default model extended with 30 tokens learned from 80 Javanese sentences, saved."""
    from acculturate.data.text import read_documents
    from acculturate.models import load

    texts = [d.text for d in read_documents(data_dir / "nusax" / "valid.csv", field="javanese")][:80]
    old = load("smollm2-135m", device="cpu")
    old_embed = old.model.get_input_embeddings().weight.detach().clone()
    new = load("smollm2-135m", device="cpu")
    tokenizer, ext = extend_vocabulary(new.model, new.tokenizer, texts, ExtendConfig(new_tokens=30))
    out = tmp_path_factory.mktemp("ext") / "model"
    save_extended(new.model, tokenizer, ext, out)
    return {"old": old, "old_embed": old_embed, "model": new.model, "tokenizer": tokenizer, "ext": ext,
            "dir": out, "texts": texts}


@pytest.mark.slow
def test_new_rows_are_exactly_the_mean_of_the_old_pieces(extended):
    model, ext, old_embed = extended["model"], extended["ext"], extended["old_embed"]
    old_tok = extended["old"].tokenizer
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == ext.new_vocab_size == 49152 + len(ext.new_ids)
    assert model.get_output_embeddings().weight is weight          # still tied: one row serves both
    torch.testing.assert_close(weight[:49152], old_embed, rtol=0, atol=0)
    for new_id in ext.new_ids:
        string = extended["tokenizer"].decode([new_id])
        pieces = old_tok(string, add_special_tokens=False)["input_ids"]   # what the old tokenizer does
        assert pieces == ext.pieces[new_id] and len(pieces) >= 2
        assert torch.equal(weight[new_id], old_embed[pieces].mean(0))


@pytest.mark.slow
def test_extended_tokenizer_uses_the_new_tokens_and_leaves_english_alone(extended):
    old_tok, new_tok, texts = extended["old"].tokenizer, extended["tokenizer"], extended["texts"]
    before, after = fertility(old_tok, texts)["fertility"], fertility(new_tok, texts)["fertility"]
    assert after < before - 0.05
    ids = new_tok(texts, add_special_tokens=False)["input_ids"]
    assert any(i in set(extended["ext"].new_ids) for row in ids for i in row)
    assert all(new_tok.decode(row) == text for row, text in zip(ids, texts))      # lossless
    assert new_tok(ENGLISH)["input_ids"] == old_tok(ENGLISH)["input_ids"]


@pytest.mark.slow
def test_extended_model_saves_and_reloads_as_a_plain_hf_model(extended):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(extended["dir"])
    tok = AutoTokenizer.from_pretrained(extended["dir"])
    ids = torch.tensor([tok(JAVANESE)["input_ids"]])
    assert tok(JAVANESE)["input_ids"] == extended["tokenizer"](JAVANESE)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, extended["model"](ids).logits)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert read_new_token_ids(extended["dir"]) == extended["ext"].new_ids


@pytest.mark.slow
def test_lora_with_new_token_rows_round_trips_through_peft(extended, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from acculturate.adapters import LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter
    from acculturate.adapters.token_rows import apply_token_rows, remove_token_rows
    from acculturate.models import load

    new_ids = read_new_token_ids(extended["dir"])
    loaded = load(extended["dir"], device="cpu")
    cfg = LoRAConfig(r=2, alpha=4, dropout=0.0, targets=("q_proj",))
    apply_lora(loaded.model, cfg)
    rows = apply_token_rows(loaded.model, new_ids)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.token_adapter.trainable_tokens_delta" in trainable
    assert all("lora_" in n or "token_adapter" in n for n in trainable)
    with torch.no_grad():
        rows.rows.add_(torch.randn(rows.rows.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    ids = torch.tensor([[new_ids[0], 330, new_ids[-1], 28, new_ids[1]]])
    with torch.no_grad():
        ours = loaded.model(ids).logits
    save_adapter(loaded.model, tmp_path / "adapter", str(extended["dir"]), cfg)

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended["dir"]), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours, rtol=1e-5, atol=1e-5)
    peft_model.save_pretrained(tmp_path / "from_peft")           # and PEFT's own save loads here
    again = load(extended["dir"], device="cpu").model
    load_adapter(again, tmp_path / "from_peft")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ours, rtol=1e-5, atol=1e-5)
    merge_lora(again)                                # what export_merged does before saving
    remove_token_rows(again, merge=True)             # the rows go into the tied weight
    assert type(again.get_input_embeddings()) is torch.nn.Embedding
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cli_tokenizer_extend_reports_fertility_on_both_parts(tmp_path, capsys):
    import json

    from acculturate.cli import main

    assert main(["tokenizer", "extend", "--corpus", "shipped:nusax/valid.csv", "--column", "buginese",
                 "--output", str(tmp_path / "bug"), "--new-tokens", "8", "--test-fraction", "0.2"]) == 0
    record = json.loads((tmp_path / "bug" / "vocab_extension.json").read_text())
    assert len(record["tokens"]) == 8 and record["new_vocab_size"] == 49152 + len(record["new_ids"])
    assert record["fertility"]["train"]["after"] < record["fertility"]["train"]["before"]
    assert record["fertility"]["test"]["words"] > 0
    assert "fertility (tokens/word)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="ExtendConfig.new_tokens"):
        main(["tokenizer", "extend", "--corpus", "shipped:nusax/valid.csv", "--column", "buginese",
              "--output", str(tmp_path / "x"), "--new-tokens", "0"])


def sentencepiece_style_tokenizer(texts, legacy: bool):
    """A SentencePiece-style BPE (word starts marked "▁", as Llama 2 / Mistral / Gemma ship it)
    trained on ``texts``: with a Metaspace pre-tokenizer, or (``legacy``) the Llama-2 layout of a
    normalizer that prepends "▁" and replaces spaces, and no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>"],
                                                           show_progress=False))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if legacy:
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("legacy", [False, True], ids=["metaspace", "llama2-normalizer"])
def test_sentencepiece_style_tokenizers_are_extended_too(data_dir, tmp_path, legacy):
    """The same extension over a SentencePiece-style BPE: new tokens in its "▁" spelling, fewer
    tokens per Javanese word, English unchanged, lossless decoding, and the saved directory reloads."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from acculturate.data import read_examples
    from acculturate.data.text import read_documents
    from acculturate.resources import resource_path

    english = [e.messages[0]["content"] for e in read_examples(resource_path("data") / "instructions" / "instruction-data.json")]
    javanese = [d.text for d in read_documents(data_dir / "nusax" / "valid.csv", field="javanese")][:80]
    old_tok = sentencepiece_style_tokenizer(english, legacy)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(old_tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    old_embed = model.get_input_embeddings().weight.detach().clone()
    new_tok, ext = extend_vocabulary(model, old_tok, javanese, ExtendConfig(new_tokens=30))
    assert len(ext.tokens) == 30 and any(t.startswith("▁") for t in ext.tokens)
    assert ext.new_vocab_size == len(old_tok) + len(ext.new_ids) == len(new_tok)
    weight = model.get_input_embeddings().weight
    for new_id in ext.new_ids:
        assert torch.equal(weight[new_id], old_embed[ext.pieces[new_id]].mean(0))

    assert fertility(new_tok, javanese)["fertility"] < fertility(old_tok, javanese)["fertility"] - 0.1
    ids = new_tok(javanese, add_special_tokens=False)["input_ids"]
    assert any(i in set(ext.new_ids) for row in ids for i in row)
    assert all(new_tok.decode(row) == old_tok.decode(old_tok(t, add_special_tokens=False)["input_ids"])
               for row, t in zip(ids, javanese))                                   # decodes as before
    assert new_tok(english[:50])["input_ids"] == old_tok(english[:50])["input_ids"]

    save_extended(model, new_tok, ext, tmp_path / "model")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert reloaded(javanese[:10])["input_ids"] == new_tok(javanese[:10])["input_ids"]


def test_tokenizers_it_cannot_extend_are_refused_by_kind():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="needs a BPE tokenizer; this one is 'WordPiece'"):
        extend_vocabulary(torch.nn.Module(), wordpiece, ["a a a"])
    plain = Tokenizer(models.BPE({"a": 0, "b": 1}, []))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="SentencePiece-style BPE .* pre-tokenizes with \\['Whitespace'\\]"):
        extend_vocabulary(torch.nn.Module(), PreTrainedTokenizerFast(tokenizer_object=plain), ["a b a b"])
