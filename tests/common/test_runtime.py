import pytest
import torch

from fashionblip2.common.issues import BadInputError
from fashionblip2.common.runtime import resolve_device, seed_everything


def test_auto_picks_what_there_is_and_cpu_is_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error_naming_the_key():
    with pytest.raises(BadInputError, match="training.device is 'cuda:1' but no CUDA device is available"):
        resolve_device("cuda:1", "training.device")


def test_the_same_seed_draws_the_same_numbers():
    seed_everything(3)
    first = torch.randn(4)
    seed_everything(3)
    assert torch.equal(first, torch.randn(4))
