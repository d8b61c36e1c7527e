"""What a benchmark ran on, described the same way in every result file.

Results are only comparable between runs on the same kind of CPU: the SIMD extensions decide which
kernels run (bf16 autocast needs avx512_bf16; int8 speed follows VNNI/AMX), and a shared 2-core VM's
load decides the rest. So every result records the CPU, its SIMD flags, the hypervisor, the software
versions the benchmark passes in, and the load average before and after (:func:`uptime`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")


def lscpu() -> dict[str, str]:
    """lscpu's fields ("Model name", "Flags", ...); empty where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in out.splitlines()) if sep}


def machine(**software: Any) -> dict[str, Any]:
    """CPU model, logical CPUs, hypervisor, SIMD flags, Python and date, plus ``software`` (versions)."""
    fields = lscpu()
    flags = set(fields.get("Flags", "").split())
    return {
        "cpu_model": fields.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "hypervisor": fields.get("Hypervisor vendor", ""),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **software,
    }


def describe(m: dict[str, Any]) -> str:
    """One markdown line: "CPU: <model>, N logical CPUs (<hypervisor> guest), SIMD ...; torch x, ..."."""
    where = f"{m['hypervisor']} guest" if m.get("hypervisor") else "bare metal"
    simd = ", ".join(m["simd"]) or "none"
    line = f"CPU: {m['cpu_model']}, {m['cpus']} logical CPUs ({where}), SIMD: {simd}"
    skip = {"cpu_model", "cpus", "hypervisor", "simd", "date"}
    extras = [f"{k.replace('_', ' ')} {v}" for k, v in m.items() if k not in skip]
    return f"{line}; {', '.join(extras)}" if extras else line


def uptime() -> str:
    """The `uptime` line: the load average a result was measured under."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
