"""The deployment CPU: instruction-set detection, the AUTOQUANT_TARGET_ISA override, reduce_range."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant import hardware
from autoquant.config import QuantizationConfig
from autoquant.errors import ConfigError
from autoquant.hardware import CpuIsa, describe, parse_isa, resolve_reduce_range, target_isa


def test_cpuinfo_flags_are_read(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_1 avx avx2 avx512f avx512bw\n\nprocessor\t: 1\n")
    isa = CpuIsa("x86_64", hardware._cpuinfo_flags(cpuinfo), "/proc/cpuinfo")
    assert isa.label == "x86_64 avx512 (no VNNI)" and isa.u8s8_saturates
    assert hardware._cpuinfo_flags(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("name", "label", "reduce"),
    [
        ("avx2", "x86_64 avx2 (no VNNI)", True),
        ("AVX512", "x86_64 avx512 (no VNNI)", True),
        ("avx512_vnni", "x86_64 avx512_vnni", False),
        ("avx-vnni", "x86_64 avx_vnni", False),
        ("amx", "x86_64 avx512_vnni", False),
        ("x86_64", "x86_64 (flags unknown: assuming no VNNI)", True),
        ("arm64", "aarch64", False),
    ],
)
def test_target_isa_override(monkeypatch: pytest.MonkeyPatch, name: str, label: str, reduce: bool) -> None:
    monkeypatch.setenv(hardware.ISA_ENV, name)
    isa = target_isa()
    assert (isa.label, isa.source) == (label, hardware.ISA_ENV)
    assert resolve_reduce_range("auto") is reduce
    assert resolve_reduce_range(True) is True and resolve_reduce_range(False) is False


def test_bad_override_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="AUTOQUANT_TARGET_ISA='avx3': unknown instruction set avx3"):
        parse_isa("avx3")
    with pytest.raises(ConfigError, match="x86-64 and ARM"):
        parse_isa("avx2,arm64")


def test_host_isa_without_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hardware.ISA_ENV, raising=False)
    isa = target_isa()
    assert isa == hardware.host_isa() and isa.source in ("/proc/cpuinfo", "py-cpuinfo", "unknown")
    assert resolve_reduce_range("auto") is isa.u8s8_saturates


def test_describe_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hardware.ISA_ENV, "avx2")
    assert describe() == {
        "cpu_isa": "x86_64 avx2 (no VNNI)",
        "cpu_isa_source": hardware.ISA_ENV,
        "reduce_range": "auto",
        "reduce_range_resolved": True,
    }
    assert QuantizationConfig().reduce_range == "auto"
    assert QuantizationConfig(reduce_range=True).reduce_range is True
    with pytest.raises(ValueError, match="reduce_range"):
        QuantizationConfig(reduce_range="sometimes")
