"""GPU A/B of the decoding step's top-p sampler, each side captured as a CUDA graph as the static
decoders run it.

  filter_vocab  filter_top_k + filter_top_p (sort, softmax, scan, scatter back to vocabulary order,
                mask), then softmax and inverse CDF in vocabulary order: the sampler before
                ``sampling.sample_sorted``
  sorted        ``sampling.sample_sorted``: one sort, the inverse CDF in order of score
  plain         softmax and inverse CDF, no filter (what temperature alone costs; for scale)

Llama 3's vocabulary (128,256), fp32 logits ~ N(0, 3^2), temperature 0.7, top-p 0.9, one uniform a
row. Per batch size: 3 rounds, the sides interleaved, each the median of 50 replays (CUDA events);
the row reports the median of the rounds. Also checks that both filtered sides can only pick
nucleus tokens.

    python3 bench/sampler.py     # one JSON line per result, also appended to $OUT/sampler.jsonl
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from acculturate.decode.sampling import (  # noqa: E402
    apply_temperature, filter_top_k, filter_top_p, sample_inverse_cdf, sample_sorted,
)

VOCAB, TEMPERATURE, TOP_P, ROUNDS, REPLAYS = 128_256, 0.7, 0.9, 3, 50

SIDES = {
    "filter_vocab": lambda logits, u: sample_inverse_cdf(
        filter_top_p(filter_top_k(apply_temperature(logits, TEMPERATURE), 0), TOP_P).softmax(-1), u),
    "sorted": lambda logits, u: sample_sorted(apply_temperature(logits, TEMPERATURE), u, 0, TOP_P),
    "plain": lambda logits, u: sample_inverse_cdf(apply_temperature(logits, TEMPERATURE).softmax(-1), u),
}


def _median_us(graph: torch.cuda.CUDAGraph) -> float:
    times = []
    for _ in range(REPLAYS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return statistics.median(times)


def case(B: int) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(B)
    logits = torch.randn(B, VOCAB, device="cuda", generator=g) * 3
    u = torch.rand(B, device="cuda", dtype=torch.float64, generator=g)
    nucleus = torch.isfinite(filter_top_p(apply_temperature(logits, TEMPERATURE), TOP_P))
    graphs, inside = {}, {}
    for name, fn in SIDES.items():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(logits, u)
        torch.cuda.current_stream().wait_stream(stream)
        graphs[name] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[name]):
            picked = fn(logits, u)
        graphs[name].replay()
        torch.cuda.synchronize()
        inside[name] = bool(nucleus.gather(1, picked[:, None]).all()) if name != "plain" else None
    rounds = {name: [] for name in SIDES}
    for _ in range(ROUNDS):
        for name, graph in graphs.items():
            rounds[name].append(_median_us(graph))
    return [dict(case="sampler", side=name, B=B, V=VOCAB, top_p=TOP_P, us=round(statistics.median(r), 1),
                 rounds_us=[round(x, 1) for x in r], picks_in_nucleus=inside[name],
                 nucleus_tokens_row0=int(nucleus[0].sum())) for name, r in rounds.items()]


def main() -> None:
    sink = open(Path(os.environ.get("OUT", "/tmp")) / "sampler.jsonl", "a")
    env = dict(case="env", torch=torch.__version__, gpu=torch.cuda.get_device_name())
    for row in [env] + [r for B in (1, 8, 32, 64) for r in case(B)]:
        print(json.dumps(row), flush=True)
        sink.write(json.dumps(row) + "\n")
        sink.flush()


if __name__ == "__main__":
    main()
