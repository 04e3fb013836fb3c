import subprocess
import sys
import textwrap

import pytest
import torch

from acculturate.train.memory import PeakMemory, current_rss_bytes


def test_cpu_peak_sees_a_transient_allocation():
    # In a fresh process: inside the test session, memory freed by earlier tests stays resident and an
    # allocation can reuse it without growing RSS (which is what RSS growth should then report).
    code = textwrap.dedent("""
        import time, torch
        from acculturate.train.memory import PeakMemory
        with PeakMemory("cpu", interval_s=0.001) as mem:
            x = torch.ones(64 * 1024 * 1024 // 4)   # 64 MiB, touched (ones writes every page)
            time.sleep(0.05)                         # several sampling intervals while it is held
            del x
        print(mem.kind, mem.peak_bytes)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    kind, peak = out[0], int(out[1])
    assert kind == "cpu_rss_growth"
    assert 48 * 1024 * 1024 <= peak < 1024 ** 3


def test_rss_is_positive():
    assert current_rss_bytes() > 10 * 1024 * 1024


@pytest.mark.gpu
def test_cuda_peak_counts_allocations():
    with PeakMemory("cuda") as mem:
        x = torch.ones(32 * 1024 * 1024 // 4, device="cuda")
        del x
    assert mem.kind == "cuda_max_allocated"
    assert mem.peak_bytes >= 32 * 1024 * 1024
