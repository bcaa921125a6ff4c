"""tools/: cpu_layout (topology, mask usage, errors) and pmdinfo (ELF symbols, SIMD)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pmd.eal import EalError
from tools import cpu_layout
from tools.pmdinfo import classify_asm, demangle

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---- cpu_layout ----------------------------------------------------------

def test_read_topology_one_entry_per_cpu():
    topo = cpu_layout.read_topology(loads=[])
    cpus = [c.cpu for c in topo]
    assert len(cpus) == len(set(cpus))
    assert os.sched_getaffinity(0) <= set(cpus)
    for c in topo:
        assert c.cpu in c.siblings
        assert c.allowed == (c.cpu in os.sched_getaffinity(0))


def test_read_topology_without_sysfs(tmp_path):
    topo = cpu_layout.read_topology(sysfs=tmp_path, loads=[])
    assert topo and all(c.core_id is None and c.numa_node is None and c.siblings == [c.cpu] for c in topo)


def test_main_json_parses(capsys):
    assert cpu_layout.main(["--json", "--interval", "0.01"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["cpu"] for c in doc["cpus"]} >= os.sched_getaffinity(0)
    assert all("load" in c and "numa_node" in c for c in doc["cpus"])


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs cpus 0 and 1")
def test_mask_usage_0x3_names_cpus_0_and_1():
    topo = cpu_layout.read_topology(loads=[])
    usage = cpu_layout.mask_usage("0x3", cpu_layout.parse_lcores("0x3", "mask", topo), topo)
    assert usage.cpus == [0, 1]
    assert [(u.lcore, u.cpu) for u in usage.lcores] == [(0, 0), (1, 1)]


def test_mask_usage_warns_on_shared_cpu_and_smt_siblings():
    topo = [
        cpu_layout.CpuInfo(0, 0, 0, [0, 2], 0, None, True),
        cpu_layout.CpuInfo(1, 1, 0, [1, 3], 0, None, True),
        cpu_layout.CpuInfo(2, 0, 0, [0, 2], 0, None, True),
        cpu_layout.CpuInfo(3, 1, 0, [1, 3], 0, None, True),
    ]
    shared = cpu_layout.mask_usage("0@1,1@1", cpu_layout.parse_lcores("0@1,1@1", "list", topo), topo)
    assert any("share cpu 1" in w for w in shared.warnings)
    smt = cpu_layout.mask_usage("0x5", cpu_layout.parse_lcores("0x5", "mask", topo), topo)
    assert any("SMT siblings" in w and "cpus 0,2" in w for w in smt.warnings)
    clean = cpu_layout.mask_usage("0x3", cpu_layout.parse_lcores("0x3", "mask", topo), topo)
    assert clean.warnings == []


def test_parse_lcores_rejects_unknown_cpu():
    topo = [cpu_layout.CpuInfo(0, 0, 0, [0], None, None, True)]
    with pytest.raises(EalError, match="cpu 1 does not exist"):
        cpu_layout.parse_lcores("0x2", "mask", topo)


def test_bad_mask_exits_2_with_one_line():
    r = run_tool("tools.cpu_layout", "--mask", "zz")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "zz" in lines[0] and "hexadecimal" in lines[0]


# ---- pmdinfo -------------------------------------------------------------

def test_demangle_numba_names():
    assert demangle("_ZN3pmd4mbuf10alloc_bulkB2v8B52c8tJTIeFE282MbufPool") == "pmd.mbuf.alloc_bulk"
    assert demangle("_ZN7cpython3pmd6fwd4loop8fwd_loopB2v1E").endswith("[cpython wrapper]")
    assert demangle("_ZN3pmd5burst14_rx_burst_impl12_3clocals_3e2rxB2v1E") == "pmd.burst._rx_burst_impl.<locals>.rx"
    assert demangle("NRT_incref") == "NRT_incref"


def test_classify_asm_families():
    scalar = classify_asm(["movq\t(%rdi), %rax", "vmovsd\t(%rsi), %xmm0", "vpxor\t%xmm1, %xmm1, %xmm1"])
    assert scalar["simd"] == ["AVX"] and scalar["packed_insns"] == 0
    packed = classify_asm(["paddd\t%xmm1, %xmm0", "vpaddq\t%ymm1, %ymm2, %ymm3", "vpaddq\t%zmm1, %zmm2, %zmm3{%k1}"])
    assert packed["simd"] == ["SSE", "AVX2", "AVX-512"] and packed["packed_insns"] == 3
    moves = classify_asm(["vmovups\t%ymm0, (%rdi)", "movaps\t%xmm0, 16(%rsp)"])
    assert moves["packed_insns"] == 0 and moves["vector_insns"] == 2


def test_pmdinfo_without_warm_suggests_it():
    r = run_tool("tools.pmdinfo")
    assert r.returncode == 0 and "--warm" in r.stdout


def test_pmdinfo_warm_json_lists_kernel_symbols():
    r = run_tool("tools.pmdinfo", "--warm", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for kernel in ("pmd.null_pmd.driver.null_rx", "pmd.ring_pmd.driver.ring_rx", "pmd.fwd.loop.fwd_loop"):
        overloads = [ov for ov in report if ov["kernel"] == kernel]
        assert overloads, f"{kernel} not reported"
        for ov in overloads:
            main = next(s for s in ov["symbols"] if s["symbol"] == ov["main"])
            assert main["name"] == kernel
            assert main["size"] > 0
            assert isinstance(main["simd"], list) and isinstance(main["vectorized"], bool)
