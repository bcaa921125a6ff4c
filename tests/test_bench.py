"""The benchmark runs and prints figures (no thresholds: speed lives in the
bench output, not in tests)."""
import json
import subprocess
import sys

from .conftest import ROOT


def test_framework_bench_short_json():
    out = subprocess.run([sys.executable, "-m", "apps.bench", "framework", "--seconds", "0.3",
                          "--rounds", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    print(out.stdout)  # the figures, visible with pytest -s
    results = json.loads(out.stdout)["results"]
    assert {r["scenario"] for r in results} == {"null->null io", "ring<->ring io"}
    assert all(r["mpps_median"] > 0 and r["ns_per_packet"] > 0 for r in results)


def test_bench_rejects_unknown_scenario():
    out = subprocess.run([sys.executable, "-m", "apps.bench", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
