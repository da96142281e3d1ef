"""naming: targets, local versions, wheel file names (checked with packaging)."""

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from buildtool import naming


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("linux", "2.8.0", "12.9.1", "3.12"), "linux-pytorch28-cu129-python312"),
        (("linux", "2.7.0", "12.8.1", "3.12"), "linux-pytorch27-cu128-python312"),
        (("windows", "2.8.0", "12.9.1", "3.12"), "windows-pytorch28-cu129-python312"),
        (("linux", "2.11.0", "13.0.2", "3.12"), "linux-pytorch211-cu130-python312"),
        (("linux", "2.11.0", "13.0.2", None), "linux-pytorch211-cu130-abi3"),
        (("linux", "2.8.0", "12.8.1", "3.10"), "linux-pytorch28-cu128-python310"),
    ],
)
def test_target_name(args, name):
    assert naming.target_name(*args) == name
    assert naming.test_target_name(name) == "test-" + name


def test_local_and_full_version():
    assert naming.local_version("12.9.1", "2.8.0") == "cu129torch2.8"
    assert naming.full_version("2.2.0", "12.9.1", "2.8.0") == "2.2.0+cu129torch2.8"
    v = Version(naming.full_version("2.2.0", "13.0.2", "2.11.0"))
    assert v.local == "cu130torch2.11" and v.public == "2.2.0"


def test_torch_requirement():
    assert naming.torch_requirement("2.8.0") == "torch==2.8.*"
    assert naming.torch_requirement("2.11.0") == "torch==2.11.*"


@pytest.mark.parametrize(
    ("python", "plat", "expected"),
    [
        ("3.12", "manylinux_2_28_x86_64",
         "sageattention-2.2.0+cu129torch2.8-cp312-cp312-manylinux_2_28_x86_64.whl"),
        (None, "manylinux_2_28_x86_64",
         "sageattention-2.2.0+cu129torch2.8-cp39-abi3-manylinux_2_28_x86_64.whl"),
        ("3.12", "win_amd64", "sageattention-2.2.0+cu129torch2.8-cp312-cp312-win_amd64.whl"),
    ],
)
def test_wheel_filename_is_valid(python, plat, expected):
    fname = naming.wheel_filename("sageattention", "2.2.0", "12.9.1", "2.8.0", python, plat)
    assert fname == expected
    name, version, build, tags = parse_wheel_filename(fname)
    assert name == "sageattention"
    assert str(version) == "2.2.0+cu129torch2.8"
    assert naming.wheel_tag(python, plat) in tags


def test_short_forms():
    assert naming.cuda_short("12.8.1") == "cu128"
    assert naming.torch_short("2.11.0") == "pytorch211"
    assert naming.python_short("3.9") == "python39"
    assert naming.python_short(None) == "abi3"
