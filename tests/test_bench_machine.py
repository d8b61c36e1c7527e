"""The machine description every benchmark result starts with."""

from __future__ import annotations

from bench.machine import describe, machine


def test_machine_names_the_cpu_its_simd_and_the_software_passed_in() -> None:
    m = machine(torch="2.x", torch_threads=2)
    assert m["cpus"] and m["cpu_model"] and m["date"].endswith("UTC")
    assert set(m["simd"]) <= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16"}
    assert (m["torch"], m["torch_threads"]) == ("2.x", 2)


def test_describe_is_one_line_with_every_field_but_the_date() -> None:
    m = {
        "cpu_model": "AMD EPYC",
        "cpus": 2,
        "hypervisor": "KVM",
        "simd": ["avx2", "avx512_bf16"],
        "python": "3.11.7",
        "date": "2026-12-06 23:00 UTC",
        "onnxruntime": "1.32.0",
    }
    assert describe(m) == (
        "CPU: AMD EPYC, 2 logical CPUs (KVM guest), SIMD: avx2, avx512_bf16; "
        "python 3.11.7, onnxruntime 1.32.0"
    )
    assert "bare metal" in describe({**m, "hypervisor": "", "simd": []})
    assert "SIMD: none" in describe({**m, "simd": []})
