"""Which of the core's modules run compiled (mypyc, ``DERECHO_COMPILE=1`` at install, see
``setup.py``) and which as pure Python: for the bench's results, ``status`` and CI, which
checks that a compiled install really is one (a failed build falls back to pure Python
silently for the program, loudly only in the install's output).

    python -m runtime.build_info
"""

from __future__ import annotations

import importlib
import sys

COMPILED_MODULES = ("runtime.core.ordering", "runtime.core.sst", "runtime.core.smc")
"""What ``setup.py`` compiles when asked (kept in step with its ``COMPILED``; a test checks)."""


def compiled_modules() -> dict[str, bool]:
    """Per module of :data:`COMPILED_MODULES`: whether Python loaded it from an extension."""
    out = {}
    for name in COMPILED_MODULES:
        path = getattr(importlib.import_module(name), "__file__", "") or ""
        out[name] = not path.endswith(".py")
    return out


def describe() -> str:
    """One line: ``compiled (mypyc)``, ``pure Python``, or which modules are which."""
    state = compiled_modules()
    if all(state.values()):
        return "compiled (mypyc)"
    if not any(state.values()):
        return "pure Python"
    return "partly compiled: " + ", ".join(name for name, c in state.items() if c)


def main() -> int:
    print(describe())
    for name, compiled in compiled_modules().items():
        print(f"  {name}: {'compiled' if compiled else 'pure Python'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
