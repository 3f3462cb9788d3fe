"""The load test script, as it is: 200 concurrent streaming clients on loopback."""

from __future__ import annotations

import subprocess
import sys


def test_200_concurrent_streams_complete_correctly_and_leak_nothing():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loomlm.bench",
            "load",
            "--clients",
            "200",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = proc.stdout
    assert proc.returncode == 0, report + proc.stderr[-3000:]
    assert "completed:      200/200" in report
    assert "wrong outputs:  0" in report
    assert "0 running, 0 waiting, 0 KV slots held" in report
