"""contrib/scattergate.logrotate run by the real logrotate against a real gateway process.

Two lines are adapted to the test: the log directory (a temp dir) and the postrotate command
(no systemd here: the same signal is sent to the process by its pid)."""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_binary
from tests.support.polling import wait_for
from tests.support.sink import free_port

LOGROTATE_CONF = Path(__file__).resolve().parents[2] / "contrib/scattergate.logrotate"


def test_logrotate_rotates_and_the_gateway_writes_on_into_the_new_file(tmp_path: Path) -> None:
    logrotate = require_binary("logrotate")
    port = free_port()
    logs = tmp_path / "log"
    (tmp_path / "sg.toml").write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[http]\nlisten = ""\n'
                                      f'[logging]\nfile = "{logs}/scattergate.log"\n')
    process = subprocess.Popen([sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
                               cwd=tmp_path, stderr=subprocess.DEVNULL)
    log = logs / "scattergate.log"
    try:
        assert wait_for(lambda: log.exists() and "listening on" in log.read_text())
        conf = LOGROTATE_CONF.read_text().replace("/var/log/scattergate", str(logs))
        conf, replaced = re.subn(r"systemctl kill --signal=SIGUSR1 .*", f"kill -USR1 {process.pid}", conf)
        conf = conf.replace("create 0640 scattergate adm", "create 0640")  # no such user here
        assert replaced == 1
        (tmp_path / "logrotate.conf").write_text(conf)
        subprocess.run([logrotate, "--force", "--state", str(tmp_path / "state"), str(tmp_path / "logrotate.conf")],
                       check=True, timeout=60)
        assert "listening on" in (logs / "scattergate.log.1").read_text()  # rotated (delaycompress)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("someone@example.org", ["postmaster@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
        assert wait_for(lambda: " decision " in log.read_text())
        assert " decision " not in (logs / "scattergate.log.1").read_text()
        assert oct(log.stat().st_mode & 0o777) == "0o640"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
