"""Build hook for the optional compiled core; the package's metadata is in pyproject.toml.

The package is pure Python. With ``DERECHO_COMPILE=1`` the hottest modules of the protocol
core (the SST, the shard multicast and the round-robin order: the per-turn work of every
node and of the simulator) are also compiled to C extensions with mypyc, from the same typed
source. Python then imports the extension in place of the ``.py`` file. When mypyc or a C
compiler is missing, or the build fails, the install goes on as pure Python and says so: the
compiled build is only ever a speed-up, never a requirement.

    pip install -e '.[test]'                                        # pure Python
    DERECHO_COMPILE=1 pip install --no-build-isolation -e '.[test]'  # needs mypy, gcc

``python -m runtime.build_info`` prints which modules run compiled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Kept in step with runtime/build_info.py (COMPILED_MODULES), which a test checks.
COMPILED = ["runtime/core/ordering.py", "runtime/core/sst.py", "runtime/core/smc.py"]


def _say(msg: str) -> None:
    print(f"derecho-actors build: {msg}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Builds the extensions, or none of them: a half-built set (the shared library without
    a module, or the reverse) would fail at import, so any failure removes what was built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure: fall back, loudly
            self._remove_outputs()
            _say(f"compiling the core failed ({exc}); installed as pure Python")

    def _remove_outputs(self) -> None:
        for ext in self.extensions:
            for base in (Path(self.build_lib), Path(".")):
                path = base / self.get_ext_filename(ext.name)
                if path.exists():
                    path.unlink()


def _extensions() -> list[Any]:
    if os.environ.get("DERECHO_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say(
            "DERECHO_COMPILE is set but mypyc is missing (pip install mypy, then install again "
            "with --no-build-isolation); installed as pure Python"
        )
        return []
    try:
        return list(mypycify(COMPILED, opt_level="3"))
    except BaseException as exc:  # mypyc exits on type errors: fall back instead
        _say(f"mypyc could not compile the core ({exc!r}); installed as pure Python")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
