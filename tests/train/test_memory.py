import pytest
import torch

from acculturate.train.memory import PeakMemory, current_rss_bytes


def test_cpu_peak_sees_a_transient_allocation():
    with PeakMemory("cpu", interval_s=0.001) as mem:
        x = torch.ones(64 * 1024 * 1024 // 4)   # 64 MiB, touched (ones writes every page)
        for _ in range(20):                      # hold it long enough for several samples
            x.add_(1)
        del x
    assert mem.kind == "cpu_rss_growth"
    assert mem.peak_bytes >= 48 * 1024 * 1024
    assert mem.peak_bytes < 1024 ** 3


def test_rss_is_positive():
    assert current_rss_bytes() > 10 * 1024 * 1024


@pytest.mark.gpu
def test_cuda_peak_counts_allocations():
    with PeakMemory("cuda") as mem:
        x = torch.ones(32 * 1024 * 1024 // 4, device="cuda")
        del x
    assert mem.kind == "cuda_max_allocated"
    assert mem.peak_bytes >= 32 * 1024 * 1024
