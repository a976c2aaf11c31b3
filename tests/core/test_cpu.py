"""The CPU family: names, and the host's detected from what its int8 kernels do."""

from __future__ import annotations

import platform

import pytest

from edgeopt.core.cpu import CPU_FAMILIES, detect_host_cpu, ort_u8s8_saturates, resolve_cpu, saturation_possible
from edgeopt.core.errors import PassOptionError


def test_host_family_follows_its_kernels() -> None:
    host = detect_host_cpu()
    assert host.family in CPU_FAMILIES
    if platform.machine().lower() in ("aarch64", "arm64"):
        assert host.family == "arm64" and not host.saturates
    else:
        assert host.saturates is ort_u8s8_saturates()
        assert host.family == ("x86-avx2" if host.saturates else "x86-vnni")
    assert host.family in host.describe()
    assert resolve_cpu("auto") == host.family


@pytest.mark.parametrize("family", CPU_FAMILIES)
def test_family_names_resolve_to_themselves(family: str) -> None:
    assert resolve_cpu(family) == family
    assert saturation_possible(family) is (family == "x86-avx2")


def test_unknown_family_names_the_choices() -> None:
    with pytest.raises(PassOptionError, match=r"unknown cpu 'avx2'\. Use one of: auto, x86-avx2, x86-vnni, arm64"):
        resolve_cpu("avx2")
