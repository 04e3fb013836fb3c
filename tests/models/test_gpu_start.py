"""The GPU start-up thread beside the model load: started only for CUDA; on a GPU it reaches Triton's
caches."""

from __future__ import annotations

import pytest
import torch

from acculturate.models.gpu_start import start_gpu_start_up


def test_start_up_runs_only_for_cuda():
    assert start_gpu_start_up(torch.device("cpu")) is False


@pytest.mark.gpu
def test_prepare_triton_fills_the_caches_a_first_launch_needs():
    """The warm-up reaches Triton's own per-process caches (internals it names): were they to move, this
    fails instead of the warm-up silently doing nothing."""
    pytest.importorskip("triton")
    from triton.backends.nvidia.compiler import get_ptxas_version
    from triton.runtime.cache import triton_key

    from acculturate.models.gpu_start import prepare_triton, wait_for_gpu_start_up

    wait_for_gpu_start_up()   # a load earlier in the session may have started the thread
    prepare_triton(torch.device("cuda"))
    assert triton_key.cache_info().currsize == 1
    major, minor = torch.cuda.get_device_capability()
    before = get_ptxas_version.cache_info()
    get_ptxas_version(major * 10 + minor)
    assert get_ptxas_version.cache_info().hits == before.hits + 1
