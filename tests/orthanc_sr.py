"""Test helper of the SR and delivery tests: a private Orthanc on loopback ports.

Each instance gets its own JSON config, storage and ports under ``tmp_path``: no
remote access, osteoflag registered as a modality; no plugins unless ``dicomweb`` (the
Debian ``orthanc-dicomweb`` plugin, serving ``/dicom-web``), no authentication unless
``users``.
The system Orthanc service is never touched. REST calls use only the standard library.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testkit.net import free_port
from testkit.wait import wait_for
from tests.sr_fixtures import require_tool

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_dicomweb_plugin() -> Path:
    """The DICOMweb plugin's path, or skip the test (``make test`` installs it)."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"{DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb)")
    return DICOMWEB_PLUGIN


class Orthanc:
    """An Orthanc process with a REST client for the calls the tests need."""

    def __init__(
        self,
        folder: Path,
        osteoflag_ae: str,
        osteoflag_port: int,
        *,
        dicomweb: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.binary = require_tool("Orthanc")
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = "ORTHANC"
        self.log = folder / "orthanc.log"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "osteoflag-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "Plugins": [str(require_dicomweb_plugin())] if dicomweb else [],
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"osteoflag": [osteoflag_ae, "127.0.0.1", osteoflag_port]},
            "StableAge": 1,
        }
        if dicomweb:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        self._authorization = None
        if users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = users
            user, password = next(iter(users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._authorization = f"Basic {token}"
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline: float = 120.0) -> None:
        """Start Orthanc and wait until its REST API answers."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._alive, timeout=deadline)

    @property
    def base_url(self) -> str:
        """The REST API's root (``/dicom-web`` below it with the plugin)."""
        return f"http://127.0.0.1:{self.http_port}"

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {self.log.read_text(errors='replace')[-2000:]}")
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def stop(self) -> None:
        """Terminate Orthanc and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def _raw(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"{self.base_url}{path}", data=body, method=method)
        if self._authorization:
            request.add_header("Authorization", self._authorization)
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        payload = self._raw(method, path, body)
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        return self._request("GET", path)

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        """POST raw bytes or a JSON object."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._request("POST", path, data)

    def upload(self, dicom: bytes) -> dict[str, Any]:
        """``POST /instances``: store a DICOM file; returns Orthanc's answer (ID, ParentStudy)."""
        answer: dict[str, Any] = self.post("/instances", dicom)
        return answer

    def study_instances(self, study_id: str) -> list[dict[str, str]]:
        """Simplified tags of every instance in an Orthanc study, plus its Orthanc ``ID``."""
        instances = self.get(f"/studies/{study_id}/instances")
        return [
            {**self.get(f"/instances/{item['ID']}/simplified-tags"), "ID": item["ID"]}
            for item in instances
        ]

    def preview(self, instance_id: str) -> bytes | None:
        """The PNG Orthanc Explorer shows for an instance, or None if it renders none."""
        try:
            return self._raw("GET", f"/instances/{instance_id}/preview")
        except urllib.error.HTTPError:
            return None

    def file(self, instance_id: str) -> bytes:
        """The DICOM file Orthanc stored (``GET /instances/{id}/file``)."""
        return self._raw("GET", f"/instances/{instance_id}/file")
