"""The README's first command on a fresh clone: ``make serve`` sets up and serves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from testkit.daemon import write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_make_serve_on_a_fresh_clone_answers_echo(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The committed config, moved to free ports so the test never collides with a real daemon.
    with (clone / "config" / "osteoflag.toml").open("rb") as handle:
        config = tomllib.load(handle)
    port = free_port()
    config["listener"]["port"] = port
    config["web"]["port"] = free_port()
    config_path = write_config(clone / "config", config)
    assert config_path.name == "osteoflag.toml"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH", "OSTEOFLAG_"))
    }
    env["PYTHON"] = shutil.which("python3") or sys.executable
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        ["make", "serve"], cwd=clone, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        wait_for(lambda: port_open(port) or serve.poll() is not None, timeout=600, interval=0.5)
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
        echo = subprocess.run(
            [
                str(clone / ".venv" / "bin" / "osteoflag"),
                "echo",
                "127.0.0.1",
                str(port),
                "--called-aet",
                "OSTEOFLAG",
            ],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stderr
        assert "status 0x0000" in echo.stdout
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
