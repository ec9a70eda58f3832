"""Configuration: one frozen settings object, read from TOML and validated.

Relative paths resolve against the folder of the config file, so a config can be
moved together with its ``var/`` and ``models/`` folders.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from osteoflag.destination_settings import (
    AnyDestination,
    Destination,
    DestinationTLS,
    DicomWebDestination,
)
from osteoflag.errors import ConfigError
from osteoflag.settings_fields import (
    CENTURY_DAYS,
    MAX_COUNT,
    AETitle,
    LogLevel,
    PathValue,
    Port,
    Seconds,
    Section,
    is_loopback,
)

CONFIG_ENV = "OSTEOFLAG_CONFIG"
DEFAULT_CONFIG = Path("config/osteoflag.toml")


class AllowedPeer(Section):
    """A calling AE title pinned to an address: from elsewhere it is rejected.

    ``address`` is one IP address or a network in CIDR notation (``10.1.2.0/24``); an AE
    title may be listed several times to allow several addresses.
    """

    ae_title: AETitle
    address: str

    @field_validator("address")
    @classmethod
    def _is_network(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc
        return value

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The pinned address as a network (a single address is a /32 or /128)."""
        return ipaddress.ip_network(self.address, strict=False)


class TLSSettings(Section):
    """DICOM TLS on the listener (PS3.15 B.1, BCP 195): server certificate, optional client CA.

    ``required = true``: ``listener.port`` speaks TLS only, plain connections are dropped.
    ``required = false``: ``listener.port`` stays plain and TLS is served on ``port``.
    With ``ca_certificates`` set, a client must present a certificate signed by that CA.
    """

    certificate: PathValue
    private_key: PathValue
    ca_certificates: PathValue | None = None
    required: bool = True
    port: Port | None = None

    @model_validator(mode="after")
    def _port_matches_mode(self) -> TLSSettings:
        if not self.required and self.port is None:
            raise ValueError("port is required when required = false (TLS beside plain DICOM)")
        if self.required and self.port is not None:
            raise ValueError("port is only used when required = false; TLS uses listener.port")
        return self


class ListenerSettings(Section):
    """The Storage SCP: who we are and who may talk to us (PS3.8 association policy)."""

    ae_title: AETitle = "OSTEOFLAG"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aets: tuple[AETitle, ...] = ()
    max_associations: Annotated[int, Field(ge=1)] = 10
    # Connections whose A-ASSOCIATE-RQ has not arrived yet; past this the oldest is closed.
    max_pending_associations: Annotated[int, Field(ge=1)] = 16
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 60.0
    network_timeout: Seconds = 60.0
    # Announced in the A-ASSOCIATE-AC and enforced when each PDU header is read: 1 MiB costs
    # a 20 MB radiograph 20 PDUs, and bounds what one PDU makes the listener hold.
    maximum_pdu_size: Annotated[int, Field(ge=4096, le=64 * 1024 * 1024)] = 1024 * 1024
    # Larger data sets abort the association while arriving; the worker then applies its
    # own [worker] decode_budget_mb (to a deflated data set once inflated).
    max_dataset_mb: Annotated[int, Field(ge=1, le=1024)] = 1024
    allowed_peers: tuple[AllowedPeer, ...] = ()
    tls: TLSSettings | None = None

    @field_validator("allowed_calling_aets", "allowed_peers", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _pinned_titles_are_allowed(self) -> ListenerSettings:
        allowed = set(self.allowed_calling_aets)
        for peer in self.allowed_peers:
            if allowed and peer.ae_title not in allowed:
                raise ValueError(
                    f"allowed_peers names {peer.ae_title!r}, which is not in allowed_calling_aets"
                )
        return self


class StorageSettings(Section):
    """Where received instances, produced objects and the queue live."""

    path: PathValue = Path("../var")
    database_url: str = "sqlite:///../var/osteoflag.db"
    min_free_mb: Annotated[int, Field(ge=0)] = 500


class ModelSettings(Section):
    """The served bundle and its domain (what we refuse to classify)."""

    bundle: PathValue = Path("../models/default")
    threads: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 8
    body_parts: tuple[str, ...] = ()
    min_rows: Annotated[int, Field(ge=1)] = 64
    min_columns: Annotated[int, Field(ge=1)] = 64

    @field_validator("body_parts", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class DriftSettings(Section):
    """Drift watch: the last ``window`` classified instances against the bundle's reference;
    the alert fires from ``min_results`` results on, at a score PSI of ``psi_alert`` or an
    input share change of ``share_alert`` (see ``osteoflag.drift.reference``)."""

    window: Annotated[int, Field(ge=10, le=MAX_COUNT)] = 500
    min_results: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 100
    psi_alert: Annotated[float, Field(gt=0)] = 0.25
    share_alert: Annotated[float, Field(gt=0, le=1)] = 0.25

    @model_validator(mode="after")
    def _alert_can_fire(self) -> DriftSettings:
        # The window never holds more than ``window`` results: past it the alert could never fire.
        if self.min_results > self.window:
            raise ValueError(
                f"drift.min_results ({self.min_results}) exceeds drift.window ({self.window}): "
                "the window never holds that many results, so the alert could never fire"
            )
        return self


class WorkerSettings(Section):
    """The inference worker's schedule, and what decoding one instance may cost.

    ``decode_budget_mb`` bounds the data set held in memory (a deflated one once inflated)
    and the frame decoded (about 24 bytes per pixel: 512 MB allow 22 Mpx, 4700 x 4700);
    "try an image" uploads get the same budget.
    """

    sweep_seconds: Seconds = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 3
    lease_seconds: Seconds = 600.0
    decode_budget_mb: Annotated[int, Field(ge=16, le=65536)] = 512


class SRClass(StrEnum):
    """The SR Storage SOP Class of the result SR (PS3.4 B.5).

    Comprehensive 3D SR is what the IHE AI Results profile asks for; Comprehensive SR
    carries the same content (our regions are 2D) for viewers that draw regions only
    from it, such as Orthanc's Stone viewer.
    """

    COMPREHENSIVE_3D = "comprehensive-3d"
    COMPREHENSIVE = "comprehensive"


class ReportSettings(Section):
    """What is produced for each result: summary image, undetermined SRs, the SR's class."""

    summary_image: bool = True
    undetermined_sr: bool = False
    sr_class: Annotated[SRClass, Field(strict=False)] = SRClass.COMPREHENSIVE_3D


class SenderSettings(Section):
    """Delivery of produced objects: schedule, timeouts, exponential backoff and deadline."""

    interval_seconds: Seconds = 10.0
    batch_size: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 50
    timeout_seconds: Seconds = 30.0
    run_seconds: Seconds = 120.0
    backoff_base_seconds: Seconds = 30.0
    backoff_cap_seconds: Seconds = 3600.0
    deadline_seconds: Seconds = 259200.0


class RetentionSettings(Section):
    """Removal of received and produced files once their work is over (rows are kept).

    Files of an instance are removed when it was received more than ``max_age_days``
    ago, is finished (done, skipped or failed) and none of its objects is still pending.
    """

    enabled: bool = True
    max_age_days: Annotated[float, Field(gt=0, le=CENTURY_DAYS, strict=False)] = 30.0
    interval_seconds: Seconds = 3600.0
    # One run holds the write transaction while it unlinks: a million files is already long.
    batch_size: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 500


class WebSettings(Section):
    """The operator's page with ``/healthz`` and ``/metrics`` (port 0: any free port, logged).

    Without ``token`` or ``username``/``password`` it may only listen on loopback.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    token: Annotated[str, Field(min_length=16)] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password: Annotated[str, Field(min_length=8)] | None = None
    max_upload_mb: Annotated[float, Field(gt=0)] = 64.0
    max_concurrent_uploads: Annotated[int, Field(ge=1)] = 2

    @model_validator(mode="after")
    def _protected_unless_loopback(self) -> WebSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("web.username and web.password must be given together")
        if self.enabled and not is_loopback(self.host) and not self.protected:
            raise ValueError(
                f"web.host {self.host!r} is not a loopback address; set web.token or "
                "web.username and web.password before exposing the operator page"
            )
        return self

    @property
    def protected(self) -> bool:
        """True when a token or a username/password is configured."""
        return self.token is not None or self.username is not None


class Settings(Section):
    """Everything the daemon and the commands need, built once in ``main()``."""

    listener: ListenerSettings = ListenerSettings()
    storage: StorageSettings = StorageSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    report: ReportSettings = ReportSettings()
    sender: SenderSettings = SenderSettings()
    retention: RetentionSettings = RetentionSettings()
    drift: DriftSettings = DriftSettings()
    destinations: tuple[AnyDestination, ...] = ()
    #: Shadow mode for every destination (a validation period): results are made and shown on
    #: the operator page, nothing is sent.
    shadow: bool = False
    web: WebSettings = WebSettings()
    log_level: LogLevel = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("destinations", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @property
    def incoming_path(self) -> Path:
        """Folder of received instances."""
        return self.storage.path / "incoming"

    @property
    def outgoing_path(self) -> Path:
        """Folder of produced SR and summary objects."""
        return self.storage.path / "outgoing"


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to read: the explicit one, else ``$OSTEOFLAG_CONFIG``, else the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_database_url(base: Path, url: str) -> str:
    """``url`` with a relative SQLite file resolved against ``base``, whichever driver it
    names (``sqlite:///``, ``sqlite+pysqlite:///``); other URLs as they are."""
    match = re.match(r"(sqlite(?:\+\w+)?:///)([^?]*)(.*)", url, re.DOTALL)
    if match is None:
        return url
    prefix, database, query = match.groups()
    if not database or database.startswith(("/", "file:")) or database == ":memory:":
        return url
    return prefix + str(_resolve(base, Path(database))) + query


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["destinations"] and len(loc) > 2 and loc[2] in ("dimse", "dicomweb"):
        del loc[2]  # the union's tag is not a key of the file
    key = ".".join(str(part) for part in loc) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"invalid value for '{key}': {first['msg']}"


def parse_settings(data: dict[str, Any], base: Path) -> Settings:
    """Validate a decoded TOML document and resolve its paths against ``base``."""
    try:
        raw = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    storage = raw.storage.model_copy(
        update={
            "path": _resolve(base, raw.storage.path),
            "database_url": _resolve_database_url(base, raw.storage.database_url),
        }
    )
    model = raw.model.model_copy(update={"bundle": _resolve(base, raw.model.bundle)})
    listener = raw.listener
    if listener.tls is not None:
        listener = listener.model_copy(update={"tls": _resolve_paths(base, listener.tls)})
    destinations = tuple(_resolve_destination(base, d) for d in raw.destinations)
    return raw.model_copy(
        update={
            "storage": storage,
            "model": model,
            "listener": listener,
            "destinations": destinations,
        }
    )


def _resolve_destination(
    base: Path, destination: Destination | DicomWebDestination
) -> Destination | DicomWebDestination:
    """``destination`` with its certificate paths resolved against ``base``."""
    if isinstance(destination, DicomWebDestination):
        if destination.ca_certificates is None:
            return destination
        resolved = _resolve(base, destination.ca_certificates)
        return destination.model_copy(update={"ca_certificates": resolved})
    if destination.tls is None:
        return destination
    return destination.model_copy(update={"tls": _resolve_paths(base, destination.tls)})


_TLS = TypeVar("_TLS", TLSSettings, DestinationTLS)


def _resolve_paths(base: Path, section: _TLS) -> _TLS:
    """``section`` with its certificate and key paths resolved against ``base``."""
    names = ("certificate", "private_key", "ca_certificates")
    paths = {name: getattr(section, name) for name in names}
    return section.model_copy(
        update={name: _resolve(base, path) for name, path in paths.items() if path is not None}
    )


def load_settings(path: Path) -> Settings:
    """Read and validate the TOML file at ``path``; raise ConfigError naming the problem."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_settings(data, path.resolve().parent)
