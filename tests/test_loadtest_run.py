"""The harness for real: the quick steady-single scenario against a gateway and netsim it starts itself."""
import json
import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.e2e


def test_quick_steady_single_passes_and_writes_a_complete_report(tmp_path):
    out = subprocess.run([sys.executable, "-m", "loadtest", "run", "loadtest/scenarios/steady-single.toml", "--quick",
                          "--out", str(tmp_path), "--ceiling-s", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    [folder] = list(tmp_path.iterdir())
    assert folder.name.startswith("steady-single-quick-")
    names = {p.name for p in folder.iterdir()}
    assert {"report.json", "report.md", "throughput.png", "latency.png", "funnel.png"} <= names
    report = json.loads((folder / "report.json").read_text())
    verdict = report["verdict"]
    assert report["ok"] and not verdict["violations"]
    assert verdict["accepted"] == report["load"]["accepted_messages"] > 0
    assert verdict["lost"] == 0 and verdict["missing_at_netsim"] == 0 and verdict["recorded_twice"] == 0
    assert verdict["netsim_resubmits"] == 0 and report["netsim"]["unique"] == verdict["accepted"]
    assert report["generator_ceiling"]["requests_per_s"] > 0
    assert "PASS" in out.stdout and "generator ceiling" in out.stdout


def test_a_target_that_cannot_be_used_is_said_at_once_and_nothing_runs(tmp_path):
    from tests.harness import Gateway

    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw").start()
    try:
        good, wrong = tmp_path / "admin.key", tmp_path / "wrong.key"
        good.write_text(gw.key + "\n")
        wrong.write_text("gw_0000000000000000_notakey\n")
        target = f"http://127.0.0.1:{gw.port}"
        for args, said in (([target, tmp_path / "missing.key"], "cannot read"),
                           ([target, wrong], "refuses that key (401)"),
                           (["http://127.0.0.1:1", good], "no gateway answers there"),
                           (["http://10.0.0.1:8080", good], "loopback")):
            out = subprocess.run([sys.executable, "-m", "loadtest", "run", "loadtest/scenarios/steady-single.toml",
                                  "--quick", "--out", str(tmp_path / "reports"), "--target", str(args[0]),
                                  "--api-key-file", str(args[1])], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
            assert "generator ceiling" not in out.stdout  # refused before the calibration
        assert not (tmp_path / "reports").exists()
    finally:
        gw.stop()
