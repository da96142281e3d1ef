"""Names: targets, test targets, groups, PEP 440 local versions, wheel file names.

Pure functions of versions; no I/O. The scheme (what the README promises):

* build target   ``{platform}-pytorch{27}-cu{128}-python{312}``  (``...-abi3`` for abi3 wheels)
* test target    ``test-{build target}``
* groups         ``all``, ``default``, ``test-all``, ``{platform}``, ``pytorch{27}``, ``cu{128}``,
                 ``python{312}`` / ``abi3``
* local version  ``+cu129torch2.8``: the CUDA it was compiled with and the torch minor it links
* wheel          ``sageattention-2.2.0+cu129torch2.8-cp312-cp312-manylinux_2_28_x86_64.whl``
"""

from __future__ import annotations

import re

from packaging.tags import Tag
from packaging.utils import canonicalize_name
from packaging.version import Version

from .compat import ABI3_PYTHON

TEST_PREFIX = "test-"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def nodot(version: str) -> str:
    """``"3.12"`` -> ``"312"``, ``"2.11.0"`` -> ``"211"`` (major+minor only)."""
    v = Version(version)
    return f"{v.major}{v.minor}"


def cuda_short(cuda_version: str) -> str:
    """``"12.9.1"`` -> ``"cu129"``."""
    return f"cu{nodot(cuda_version)}"


def torch_short(torch_version: str) -> str:
    """``"2.8.0"`` -> ``"pytorch28"``."""
    return f"pytorch{nodot(torch_version)}"


def python_short(python: str | None) -> str:
    """``"3.12"`` -> ``"python312"``; ``None`` (abi3) -> ``"abi3"``."""
    return "abi3" if python is None else f"python{nodot(python)}"


def target_name(platform: str, torch_version: str, cuda_version: str, python: str | None) -> str:
    """Build target name; ``python=None`` means an abi3 wheel."""
    return "-".join(
        (platform, torch_short(torch_version), cuda_short(cuda_version), python_short(python))
    )


def test_target_name(target: str) -> str:
    return TEST_PREFIX + target


def local_version(cuda_version: str, torch_version: str) -> str:
    """PEP 440 local version label (without ``+``): ``cu129torch2.8``."""
    t = Version(torch_version)
    return f"{cuda_short(cuda_version)}torch{t.major}.{t.minor}"


def full_version(version: str, cuda_version: str, torch_version: str) -> str:
    """``2.2.0+cu129torch2.8`` (validated by :class:`packaging.version.Version`)."""
    v = f"{version}+{local_version(cuda_version, torch_version)}"
    return str(Version(v))


def torch_requirement(torch_version: str) -> str:
    """The requirement a wheel built against ``torch_version`` carries: ``torch==2.8.*``."""
    t = Version(torch_version)
    return f"torch=={t.major}.{t.minor}.*"


def python_tags(python: str | None) -> tuple[str, str]:
    """(python tag, abi tag): ``("cp312", "cp312")`` or for abi3 ``("cp39", "abi3")``."""
    if python is None:
        return f"cp{nodot(ABI3_PYTHON)}", "abi3"
    return f"cp{nodot(python)}", f"cp{nodot(python)}"


def wheel_tag(python: str | None, platform_tag: str) -> Tag:
    interp, abi = python_tags(python)
    return Tag(interp, abi, platform_tag)


def wheel_filename(
    package: str,
    version: str,
    cuda_version: str,
    torch_version: str,
    python: str | None,
    platform_tag: str,
) -> str:
    """The collected wheel's file name (PEP 427, name normalised with ``_``)."""
    dist = canonicalize_name(package).replace("-", "_")
    tag = wheel_tag(python, platform_tag)
    v = full_version(version, cuda_version, torch_version)
    return f"{dist}-{v}-{tag.interpreter}-{tag.abi}-{tag.platform}.whl"
