"""Run ``osteoflag`` as a real subprocess with its own config, ports and storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from testkit.net import free_port, port_open
from testkit.wait import wait_for


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(folder: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config into ``folder``; tables of lists become arrays of tables, and
    other values (``log_level``) are top-level keys."""
    tables = {name: body for name, body in sections.items() if isinstance(body, dict | list)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in sections.items() if k not in tables]
    for name, body in tables.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{name}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
        else:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    path = folder / "osteoflag.toml"
    path.write_text("\n".join(lines))
    return path


def base_sections(folder: Path, bundle: Path, port: int | None = None) -> dict[str, Any]:
    """A config for one test: loopback listener on a free port, storage under ``folder``."""
    return {
        "listener": {"port": port or free_port()},
        "storage": {
            "path": str(folder / "var"),
            "database_url": f"sqlite:///{folder / 'var' / 'osteoflag.db'}",
            "min_free_mb": 1,
        },
        "model": {"bundle": str(bundle)},
        "worker": {"sweep_seconds": 1.0},
    }


def osteoflag(*args: str, config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one ``osteoflag`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "osteoflag", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class DaemonProcess:
    """``osteoflag serve`` in a subprocess; its stderr (JSON log lines) goes to a file."""

    def __init__(self, config: Path, port: int, role: str = "all") -> None:
        self.config = config
        self.port = port
        self.role = role
        self.log_path = config.with_name("daemon.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> DaemonProcess:
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "osteoflag", "serve", "--config", str(self.config)]
        self.process = subprocess.Popen(
            [*command, "--role", self.role],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = self._listening if self.role in ("all", "listener") else self._started
        try:
            wait_for(lambda: ready() or self._exited(), timeout=timeout)
        except AssertionError:
            self.process.kill()  # a daemon that never got ready must not outlive the test
            self.process.wait(timeout=30)
            raise
        if self._exited():
            raise AssertionError(f"daemon exited early:\n{self.log_path.read_text()}")
        return self

    def _listening(self) -> bool:
        return port_open(self.port)

    def _started(self) -> bool:
        """A process without a listener is ready once it logged its start."""
        return self.log_path.exists() and '"daemon started"' in self.log_path.read_text()

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL: the crash the durability guarantees are about."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60, signum: int = signal.SIGTERM) -> int:
        """SIGTERM (or ``signum``) and wait for the graceful exit."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def status(self) -> dict[str, dict[str, int]]:
        result = osteoflag("status", "--json", config=self.config)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
