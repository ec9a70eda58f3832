#!/usr/bin/env bash
# Install the Debian tools the test suite drives (DCMTK, dicom3tools, Orthanc and its DICOMweb
# plugin, PostgreSQL, Chromium, strace) when any is missing. Needs root (CI and the dev machines
# run as root).
set -euo pipefail

missing=()
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v Orthanc >/dev/null || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v strace >/dev/null || missing+=(strace)
command -v chromium >/dev/null || missing+=(chromium chromium-driver)
# npm fetches the pinned OHIF viewer the viewer acceptance test opens (skipped without it).
command -v npm >/dev/null || missing+=(npm)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services we do not want: tests run their own instances.
for service in orthanc postgresql; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  elif [ -x "/etc/init.d/$service" ]; then
    "/etc/init.d/$service" stop >/dev/null 2>&1 || true
  fi
done
