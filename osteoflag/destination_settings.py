"""Settings of the destinations that receive the produced objects: DICOM peers over DIMSE
(optionally TLS) and DICOMweb servers over STOW-RS, told apart by their ``type``."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from osteoflag.settings_fields import AETitle, PathValue, Port, Section, is_loopback


class DestinationTLS(Section):
    """DICOM TLS towards a destination (BCP 195): the CA that signed its certificate (checked
    against ``host``), and our own certificate and key when it asks for one."""

    ca_certificates: PathValue
    certificate: PathValue | None = None
    private_key: PathValue | None = None

    @model_validator(mode="after")
    def _certificate_with_key(self) -> DestinationTLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


ObjectKind = Literal["sr", "gsps", "summary"]
ALL_OBJECTS: tuple[ObjectKind, ...] = ("sr", "gsps", "summary")


class _Destination(Section):
    """What every destination has: the kinds of produced object it receives, and whether it
    is in shadow mode (results made and kept for the operator page, never sent to it)."""

    objects: tuple[ObjectKind, ...] = ALL_OBJECTS
    shadow: bool = False

    @field_validator("objects", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Destination(_Destination):
    """A DICOM peer (C-STORE over DIMSE) that receives the produced objects."""

    type: Literal["dimse"] = "dimse"
    ae_title: AETitle
    host: str
    port: Port
    tls: DestinationTLS | None = None


class DicomWebDestination(_Destination):
    """A DICOMweb server that receives the produced objects by STOW-RS (PS3.18 10.5).

    ``url`` is the service's base (``.../dicom-web``); objects are POSTed to ``url/studies``.
    Plain ``http`` is allowed only to a loopback host. ``ca_certificates`` is the PEM bundle
    that verifies the server (default: the system's); authentication is HTTP basic
    (``username`` + ``password``) or a bearer ``token``.
    """

    type: Literal["dicomweb"]
    url: Annotated[str, Field(min_length=8, max_length=128)]
    username: Annotated[str, Field(min_length=1)] | None = None
    password: Annotated[str, Field(min_length=1)] | None = None
    token: Annotated[str, Field(min_length=1)] | None = None
    ca_certificates: PathValue | None = None

    @model_validator(mode="after")
    def _safe(self) -> DicomWebDestination:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("url must not hold credentials; use username/password or token")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError(f"url {self.url!r}: plain http only to a loopback host; use https")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.token is not None and self.username is not None:
            raise ValueError("give either username/password or token, not both")
        return self


def _destination_type(value: Any) -> str:
    """The ``type`` of a destination table; absent means today's DIMSE destination."""
    if isinstance(value, dict):
        return str(value.get("type", "dimse"))
    return str(getattr(value, "type", "dimse"))


AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_type),
]
