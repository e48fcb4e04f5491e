"""The digest of the floating-point kernels (ct_ray.models.kernels) and where runs record it."""
import pytest
import torch

from ct_ray.models.kernels import kernels_digest
from ct_ray.orchestration.mlflow_runs import kernels_tags


def test_the_kernels_digest_is_repeatable_and_leaves_the_process_as_it_was():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = kernels_digest(1)
    assert torch.equal(torch.rand(3), expected)  # the global random state is untouched
    assert torch.get_num_threads() == threads
    assert len(first) == 64 and int(first, 16) >= 0
    assert kernels_digest(1) == first
    assert kernels_digest() == kernels_digest(threads)  # default: the process's threads
    with pytest.raises(ValueError, match="threads must be at least 1"):
        kernels_digest(0)


def test_the_tags_name_the_digest_and_the_threads_it_was_computed_on():
    tags = kernels_tags()
    assert tags == {"kernels_sha256": kernels_digest(), "kernels_threads": str(torch.get_num_threads())}
