"""Multiprocess metrics ask the kernel for the pid once, not at every inc, and still follow a fork.

Run in a child interpreter: prometheus-client's value class is process-wide state."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    calls = 0
    real_getpid = os.getpid
    def counting_getpid():
        global calls
        calls += 1
        return real_getpid()
    os.getpid = counting_getpid  # before prometheus-client takes it as its default
    from scattergate.web.metrics import Metrics
    metrics = Metrics(Path(sys.argv[1]), Path(sys.argv[1]))
    calls = 0
    for _ in range(100):
        metrics.sessions.inc()
        metrics.check_seconds.labels("spf").observe(0.002)
    print(calls)
    os.getpid = real_getpid
    pid = os.fork()
    if pid == 0:
        metrics.sessions.inc(5)  # the child's own file, not the parent's
        os._exit(0)
    os.waitpid(pid, 0)
    total = sum(s.value for m in metrics.registry.collect() if m.name == "scattergate_sessions"
                for s in m.samples if s.name == "scattergate_sessions_total")
    files = sorted(p.name for p in Path(sys.argv[1]).glob("counter_*.db"))
    print(total, len(files))
''')


def test_multiprocess_values_keep_the_pid_and_a_forked_child_writes_its_own_samples(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(samples)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls, total, files = out.stdout.split()  # the first before the fork
    assert int(calls) == 0  # 300 incs and observes, no getpid() among them
    assert float(total) == 105.0 and int(files) == 2  # the parent's 100 and the child's 5, in two files
