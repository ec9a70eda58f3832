"""osteoflag: research-only fracture flagging beside a PACS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("osteoflag")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
