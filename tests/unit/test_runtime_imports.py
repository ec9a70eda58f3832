"""``validate``, ``adapt`` and ``evaluate`` run in the runtime install: no torch, scikit-learn,
matplotlib.

The check hides those packages (as the runtime install lacks them) and imports the commands'
modules in a fresh interpreter; LightGBM copes with a missing scikit-learn on its own.
"""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "osteoflag.cli",
    "osteoflag.validation.commands",
    "osteoflag.validation.scoring",
    "osteoflag.validation.validate",
    "osteoflag.validation.report",
    "osteoflag.validation.adapt",
    "osteoflag.validation.adapted_bundle",
    "osteoflag.training.evaluate",
)

HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "sklearn", "matplotlib"):
            raise ImportError(f"{name} hidden: not in the runtime install")
        return None
sys.meta_path.insert(0, Hide())
"""


def test_site_commands_import_in_the_runtime_install() -> None:
    code = HIDE + "".join(f"import {name}\n" for name in MODULES) + "print('imported')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
