"""The deployment CPU: its instruction set and the ``reduce_range`` decision that follows from it.

onnxruntime's x86-64 INT8 kernels multiply uint8 activations by int8 weights. Without VNNI they use
``VPMADDUBSW``, which adds each pair of products into an int16 and saturates: 255 x 127 x 2 does not
fit. CPUs with VNNI (AVX512-VNNI, AVX-VNNI) accumulate into int32 and do not saturate. int8
activations do not avoid it: on x86-64 onnxruntime turns int8 QDQ activations into uint8 (adding
128) before its kernels, so they take the same path. 7-bit weights (``reduce_range``, [-64, 64])
keep a pair within int16 (255 x 64 x 2 = 32640). ARM's kernels accumulate in int32.

``quantization.reduce_range: auto`` therefore means: True on x86-64 without VNNI (or when the flags
are unknown), False on VNNI CPUs and on other architectures, for both activation schemes.

The CPU is the one autoquant runs on, unless ``AUTOQUANT_TARGET_ISA`` names the deployment CPU,
e.g. ``avx2``, ``avx512`` (no VNNI), ``avx512_vnni``, ``avx_vnni``, ``amx`` or ``arm64``.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoquant.errors import ConfigError

ISA_ENV = "AUTOQUANT_TARGET_ISA"
ReduceRange = bool | Literal["auto"]

#: Flags of x86-64 CPUs whose u8s8 kernels accumulate in int32 (no int16 saturation).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8")
#: x86-64 SIMD levels, best first, for the label of a CPU without VNNI.
_X86_LEVELS = (
    ("avx512bw", "avx512"),
    ("avx512f", "avx512"),
    ("avx2", "avx2"),
    ("avx", "avx"),
    ("sse4_1", "sse4.1"),
)
#: Names accepted in AUTOQUANT_TARGET_ISA -> (architecture, flags).
_ISA_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "x86_64": ("x86_64", ()),
    "amd64": ("x86_64", ()),
    "sse4_1": ("x86_64", ("sse4_1",)),
    "avx": ("x86_64", ("avx",)),
    "avx2": ("x86_64", ("avx2",)),
    "avx512": ("x86_64", ("avx2", "avx512f", "avx512bw")),
    "avx512f": ("x86_64", ("avx2", "avx512f")),
    "avx512bw": ("x86_64", ("avx2", "avx512f", "avx512bw")),
    "avx_vnni": ("x86_64", ("avx2", "avx_vnni")),
    "avxvnni": ("x86_64", ("avx2", "avx_vnni")),
    "avx512_vnni": ("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni")),
    "avx512vnni": ("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni")),
    "vnni": ("x86_64", ("avx2", "avx_vnni")),
    "amx": ("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")),
    "amx_int8": ("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")),
    "avx_vnni_int8": ("x86_64", ("avx2", "avx_vnni", "avx_vnni_int8")),
    "aarch64": ("aarch64", ()),
    "arm64": ("aarch64", ()),
    "arm": ("aarch64", ()),
    "neon": ("aarch64", ()),
}


@dataclass(frozen=True)
class CpuIsa:
    """A CPU's architecture and instruction-set flags.

    Attributes:
        arch: ``x86_64``, ``aarch64`` or another ``platform.machine()`` name.
        flags: Instruction-set flags as /proc/cpuinfo spells them; empty when unknown.
        source: Where they come from: ``/proc/cpuinfo``, ``py-cpuinfo``, ``AUTOQUANT_TARGET_ISA`` or
            ``unknown``.
    """

    arch: str
    flags: frozenset[str]
    source: str

    @property
    def vnni(self) -> bool:
        """Whether onnxruntime's x86-64 u8s8 kernels accumulate in int32 here."""
        return bool(self.flags & set(VNNI_FLAGS))

    @property
    def u8s8_saturates(self) -> bool:
        """Whether INT8 kernels may saturate int16 sums: x86-64 without VNNI (or unknown flags)."""
        return self.arch == "x86_64" and not self.vnni

    @property
    def label(self) -> str:
        """E.g. ``x86_64 avx512_vnni``, ``x86_64 avx2 (no VNNI)``, ``aarch64``."""
        if self.arch != "x86_64":
            return self.arch
        vnni = next((f for f in VNNI_FLAGS if f in self.flags), None)
        if vnni:
            return f"x86_64 {vnni}"
        level = next((name for flag, name in _X86_LEVELS if flag in self.flags), None)
        return f"x86_64 {level} (no VNNI)" if level else "x86_64 (flags unknown: assuming no VNNI)"


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """Flags of the first CPU in /proc/cpuinfo (x86: ``flags``, ARM: ``Features``), or None."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else None


def _py_cpuinfo_flags() -> frozenset[str] | None:
    """Flags from py-cpuinfo, when it is installed (not a dependency)."""
    try:
        import cpuinfo  # type: ignore[import-not-found]
    except ImportError:
        return None
    return frozenset(cpuinfo.get_cpu_info().get("flags", []))


@functools.lru_cache(maxsize=1)
def host_isa() -> CpuIsa:
    """The instruction set of the CPU autoquant runs on."""
    flags = _cpuinfo_flags()
    if flags is not None:
        return CpuIsa(_machine(), flags, "/proc/cpuinfo")
    flags = _py_cpuinfo_flags()
    if flags is not None:
        return CpuIsa(_machine(), flags, "py-cpuinfo")
    return CpuIsa(_machine(), frozenset(), "unknown")


def parse_isa(text: str) -> CpuIsa:
    """Parse an ``AUTOQUANT_TARGET_ISA`` value: names separated by commas, spaces or ``+``.

    Raises:
        ConfigError: An unknown name.
    """
    names = [n.lower().replace("-", "_").replace(".", "_") for n in re.split(r"[\s,+]+", text.strip()) if n]
    unknown = [n for n in names if n not in _ISA_NAMES]
    if unknown or not names:
        raise ConfigError(
            f"{ISA_ENV}={text!r}: unknown instruction set {', '.join(unknown) or '(empty)'}; "
            f"use one of {', '.join(_ISA_NAMES)}"
        )
    archs = {_ISA_NAMES[n][0] for n in names}
    if len(archs) > 1:
        raise ConfigError(f"{ISA_ENV}={text!r}: names x86-64 and ARM instruction sets together")
    flags = frozenset(f for n in names for f in _ISA_NAMES[n][1])
    return CpuIsa(archs.pop(), flags, ISA_ENV)


def target_isa() -> CpuIsa:
    """The deployment CPU: ``AUTOQUANT_TARGET_ISA`` when set, else the CPU autoquant runs on.

    Raises:
        ConfigError: ``AUTOQUANT_TARGET_ISA`` names an unknown instruction set.
    """
    override = os.environ.get(ISA_ENV, "").strip()
    return parse_isa(override) if override else host_isa()


def resolve_reduce_range(setting: ReduceRange, isa: CpuIsa | None = None) -> bool:
    """``quantization.reduce_range`` as passed to onnxruntime: ``auto`` decides from the CPU.

    ``auto`` is True where onnxruntime's INT8 kernels may saturate (x86-64 without VNNI), for both
    activation schemes (onnxruntime runs int8 activations as uint8 on x86-64).
    """
    if setting != "auto":
        return bool(setting)
    return (isa or target_isa()).u8s8_saturates


def describe(setting: ReduceRange = "auto") -> dict[str, str | bool]:
    """The CPU and the decision, for outputs and tracking."""
    isa = target_isa()
    return {
        "cpu_isa": isa.label,
        "cpu_isa_source": isa.source,
        "reduce_range": setting,
        "reduce_range_resolved": resolve_reduce_range(setting, isa),
    }
