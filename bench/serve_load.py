"""Load test of `acculturate serve`: throughput of 1 client against N concurrent clients.

Starts the server as a subprocess on 127.0.0.1 (a free port, a throw-away store), sends a bounded
number of /v1/completions requests (greedy, fixed max_tokens) first from one client one after the
other, then from N client threads at once, prints requests/s, generated tokens/s and latency,
writes the numbers as JSON, and stops the server. Nothing leaves the machine.

    python bench/serve_load.py --clients 16 --requests-per-client 4 --max-tokens 32

Recorded (bench/results/serve_load.json, docs/benchmarks.md): on the quiet 2-core machine with continuous
batching (2026-12-01), 1 client 0.49 requests/s (15.6 tokens/s), 16 clients 3.06 requests/s (97.5 tokens/s):
x6.2, all 64 requests in one continuously refilled batch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = [
    "The capital of France is", "In Japan, people greet each other by", "A traditional Mexican breakfast is",
    "The most popular sport in Brazil is", "In the United Kingdom, afternoon tea", "Korean families celebrate",
    "A common greeting in Indonesia is", "In Nigeria, a wedding usually", "The national dish of Spain is",
    "In China, the New Year is", "People in Egypt often drink", "A typical house in Greece",
    "In India, Diwali is", "The weather in Ethiopia", "Children in Iran usually", "Street food in Algeria",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, db: str, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "acculturate", "serve", "--port", str(port), "--db", db, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 180 s")


def run_clients(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``per_client`` requests one after another."""
    latencies, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(per_client):
                prompt = PROMPTS[(c * per_client + r) % len(PROMPTS)]
                started = time.perf_counter()
                resp = http.post(f"{url}/v1/completions", json={
                    "model": "none", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
                elapsed = time.perf_counter() - started
                with lock:
                    if resp.status_code != 200:
                        errors.append(resp.text[:200])
                    else:
                        latencies.append(elapsed)
                        tokens.append(resp.json()["usage"]["completion_tokens"])

    before = httpx.get(f"{url}/health").json()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    latencies.sort()
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
            "completion_tokens": sum(tokens),
            "latency_p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "latency_max_s": round(latencies[-1], 2) if latencies else None,
            "batches": batches, "mean_batch": round((after["prompts"] - before["prompts"]) / max(batches, 1), 2),
            "largest_batch": after["largest_batch"], "first_error": errors[0] if errors else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--single-requests", type=int, default=8, help="requests of the one-client run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/serve_load.json")
    parser.add_argument("--set", action="append", default=[], help="ServeConfig override for the server")
    args = parser.parse_args()

    # A SIGTERM (e.g. from `timeout`) unwinds through the finally below, which stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        # Load from one address on purpose: no per-client rate limit (a later --set may turn it back on).
        extra = ["--set", "rate_limit_per_minute=0", *[a for s in args.set for a in ("--set", s)]]
        proc = start_server(port, str(Path(tmp) / "bench.db"), extra)
        url = f"http://127.0.0.1:{port}"
        try:
            run_clients(url, 1, 1, 4)  # warm-up (first forward passes are slower)
            single = run_clients(url, 1, args.single_requests, args.max_tokens)
            print(f"1 client:   {single}", flush=True)
            many = run_clients(url, args.clients, args.requests_per_client, args.max_tokens)
            print(f"{args.clients} clients: {many}", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    result = {"max_tokens": args.max_tokens, "torch_threads": os.environ.get("OMP_NUM_THREADS"),
              "cpu_count": os.cpu_count(), "single": single, "concurrent": many,
              "speedup_requests_per_s": round(many["requests_per_s"] / single["requests_per_s"], 2),
              "speedup_tokens_per_s": round(many["tokens_per_s"] / single["tokens_per_s"], 2)}
    from acculturate.io import write_json

    write_json(args.out, result)
    print(f"throughput x{result['speedup_requests_per_s']} requests/s, x{result['speedup_tokens_per_s']} tokens/s "
          f"with {args.clients} clients; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
