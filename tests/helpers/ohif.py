"""OHIF, the web viewer the acceptance tests open our objects in: the npm package
``@ohif/app`` (pinned) ships a built viewer in ``dist/``.

``ohif_dist`` fetches it once with ``npm pack`` into the gitignored ``.cache/ohif/`` of the
work tree and skips the test, saying why, when npm is missing or the registry unreachable.
``app_config`` is the ``window.config`` that points the viewer at one DICOMweb source on the
page's own origin (no CORS), with the investigational-use dialog off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

OHIF_VERSION = "3.13.2"
PACKAGE = f"@ohif/app@{OHIF_VERSION}"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "ohif" / OHIF_VERSION


def ohif_dist() -> Path:
    """The unpacked ``dist/`` of the pinned OHIF, fetched on first use."""
    dist = CACHE / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot fetch {PACKAGE} (Debian package npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(
            [npm, "pack", PACKAGE, "--silent"],
            cwd=CACHE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm pack {PACKAGE} timed out (registry unreachable?)")
    tarball = CACHE / f"ohif-app-{OHIF_VERSION}.tgz"
    if run.returncode != 0 or not tarball.is_file():
        reason = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"npm pack {PACKAGE} failed (registry unreachable?): {reason[0]}")
    with tarfile.open(tarball) as archive:
        archive.extractall(CACHE, filter="data")
    tarball.unlink()
    return dist


def app_config(base_url: str) -> bytes:
    """``app-config.js`` for a viewer served at ``base_url`` with DICOMweb at ``/dicom-web``."""
    root = f"{base_url}/dicom-web"
    config = {
        "name": "osteoflag-acceptance",
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 20, "thumbnail": 4, "prefetch": 4},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": {
                    "friendlyName": "osteoflag test Orthanc",
                    "name": "orthanc",
                    "wadoUriRoot": root,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "dicomUploadEnabled": False,
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n".encode()
