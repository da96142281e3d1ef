"""compat: which torch ships which CUDA, arch lists, auditwheel excludes."""

import pytest

from buildtool import compat


@pytest.mark.parametrize(
    ("torch", "cuda", "ships"),
    [
        ("2.7.0", "11.8.0", True),
        ("2.7.0", "12.6.3", True),
        ("2.7.0", "12.8.1", True),
        ("2.7.0", "12.9.1", False),  # the classic: torch 2.7 has no cu129 build
        ("2.8.0", "12.9.1", True),
        ("2.8.0", "11.8.0", False),
        ("2.8.0", "13.0.2", False),
        ("2.9.0", "13.0.0", True),
        ("2.11.0", "13.0.2", True),
        ("2.11.0", "12.9.1", False),
        ("2.10.0", "12.8.1", False),  # unverified release: not in the table
    ],
)
def test_torch_ships(torch, cuda, ships):
    assert compat.torch_ships(torch, cuda) is ships


def test_every_torch_has_python_range():
    assert set(compat.TORCH_CUDA_BUILDS) == set(compat.TORCH_PYTHONS)
    for cudas in compat.TORCH_CUDA_BUILDS.values():
        assert set(cudas) <= set(compat.KNOWN_CUDA)


@pytest.mark.parametrize(
    ("arch_list", "cuda", "problem"),
    [
        ("8.0;8.6;8.9;9.0a;12.0", "12.8.1", None),
        ("8.0 8.6 9.0a", "12.4.0", None),
        ("8.0;9.0+PTX", "11.8.0", None),
        ("8.0;12.0", "12.6.3", "needs CUDA >= 12.8"),
        ("9.0a", "11.8.0", "needs CUDA >= 12.0"),
        ("8.0;sm_90", "12.8.1", "unknown GPU architecture 'sm_90'"),
        ("", "12.8.1", "empty"),
        ("8.0;8.0", "12.8.1", "twice"),
    ],
)
def test_check_arch_list(arch_list, cuda, problem):
    result = compat.check_arch_list(arch_list, cuda)
    if problem is None:
        assert result is None
    else:
        assert problem in result


def test_hopper_arch_accepted_by_torch_parser():
    """9.0a must be a valid TORCH_CUDA_ARCH_LIST entry for torch's cpp_extension."""
    cpp_extension = pytest.importorskip("torch.utils.cpp_extension")
    import inspect

    assert "'9.0a'" in inspect.getsource(cpp_extension._get_cuda_arch_flags)


@pytest.mark.parametrize(("cuda", "cudart"), [("12.8.1", "libcudart.so.12"),
                                              ("13.0.2", "libcudart.so.13"),
                                              ("11.8.0", "libcudart.so.11.0")])
def test_auditwheel_excludes(cuda, cudart):
    ex = compat.auditwheel_excludes(cuda)
    assert cudart in ex
    assert {"libtorch.so", "libc10.so", "libtorch_cpu.so", "libc10_cuda.so"} <= set(ex)
