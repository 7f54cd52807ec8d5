"""The ``actor`` experiment of an older commit, measured in the same run (``actor_baseline``).

The baseline revision (``--baseline-rev``, env ``BENCH_BASELINE_REV``; default ``e9e848b``, the
commit the throughput issue was filed on) is checked out with ``git worktree add --detach`` in a
temporary folder, and ``bench/run.py --only actor`` runs there as a child process (same
``--quick`` and TLS mode) with ``cwd`` and ``PYTHONPATH`` set to that tree, so the ``Client``
and the node processes (``python -m <module>`` of that tree's ``local_cluster``) run the old
code. Its rows come back named ``derecho-actors @<rev> (issue start)``.

By default (``--baseline-bench current``) this checkout's ``bench/`` is copied over the old
tree's first, so both sides are measured by the same code (with the CPU µs per call columns);
if that fails against the old library, the old tree's own ``bench/`` is run instead (a note says
so). ``--baseline-bench own`` runs the old tree's own ``bench/`` from the start.

The worktree is removed (and ``git worktree prune`` run) on every exit path. Without git or the
revision (a shallow clone), the experiment says so in a note and yields no rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, security
from bench.ours import ACTOR_COLUMNS, CPU_COLUMNS, cpu_label
from bench.procs import _LIVE, ROOT, _die_with_parent, _kill_group
from bench.registry import Context, Row, experiment

ISSUE_START = "e9e848b"  # the commit the issue ("actor puts >= 100,000 calls/s") was filed on
BENCH_MODES = ("current", "own")

_settings = {"rev": os.environ.get("BENCH_BASELINE_REV") or ISSUE_START, "bench": "current"}


def configure(rev: str | None = None, bench: str | None = None) -> None:
    """Set the baseline revision and which ``bench/`` measures it (``run.py`` calls this)."""
    if rev:
        _settings["rev"] = rev
    if bench:
        if bench not in BENCH_MODES:
            raise ValueError(f"baseline bench must be one of {BENCH_MODES}, not {bench!r}")
        _settings["bench"] = bench


def _git(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _resolve(rev: str) -> str | None:
    """The full commit id of ``rev`` in this repository, None if git or the commit is missing."""
    try:
        r = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def _child_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERECHO_")}
    env["PYTHONPATH"] = str(tree)  # the old tree only: its derecho_actors and runtime, not ours
    return env


def _check_imports(tree: Path, env: dict[str, str]) -> str | None:
    """None if ``derecho_actors`` and ``runtime`` import from ``tree`` in a child started the way
    the old bench and its nodes are started (cwd and PYTHONPATH), else what they resolve to."""
    code = "import derecho_actors, runtime; print(derecho_actors.__file__); print(runtime.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return f"the old tree does not import: {r.stderr.strip().splitlines()[-1:] or r.returncode}"
    files = [Path(line).resolve() for line in r.stdout.split()]
    wrong = [str(f) for f in files if tree.resolve() not in f.parents]
    return f"the child would import {', '.join(wrong)}, not the old tree's code" if wrong else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's group (its run.py then stops its nodes), SIGKILL after 20 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    _kill_group(proc)


def _run_bench(ctx: Context, tree: Path, env: dict[str, str], out: Path, log: Path, timeout: float) -> int:
    """Run ``bench/run.py --only actor`` in ``tree``, relaying its progress lines; its exit code."""
    cmd = [sys.executable, "bench/run.py", "--only", "actor", "--out", str(out)]
    cmd += ["--quick"] if ctx.quick else []
    cmd += [] if security.use_tls() else ["--insecure"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd,
            cwd=tree,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    _LIVE.add(proc)  # reaped by the bench's exit hook too
    deadline, seen = time.monotonic() + timeout, 0
    try:
        while True:
            try:
                proc.wait(2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            lines = log.read_text(errors="replace").splitlines()
            for line in lines[seen:]:
                if line.startswith("[") and "s] " in line:  # the child's ctx.say lines, not its tables
                    ctx.say(f"  | {line.split('s] ', 1)[1]}")
            seen = len(lines)
            if finished:
                return proc.returncode
            if time.monotonic() > deadline:
                ctx.note(f"the baseline run took more than {timeout:.0f} s; stopped")
                return -1
    finally:
        _stop(proc)


def _rows_from(results: Path) -> tuple[list[Row], list[str], dict[str, Any]]:
    doc = json.loads(results.read_text())
    exp = doc.get("experiments", {}).get("actor", {})
    notes = list(exp.get("notes", []))
    if "error" in exp:
        notes.append(f"the actor experiment failed: {exp['error']}")
    return list(exp.get("rows", [])), notes, doc.get("machine", {})


@experiment(
    "actor_baseline",
    f"Actor API of an older commit (--baseline-rev, default {ISSUE_START}: the issue's start), same run",
    columns=ACTOR_COLUMNS + CPU_COLUMNS,
    plot=report.plot_comparison,
)
def actor_baseline(ctx: Context) -> list[Row]:
    rev, mode = _settings["rev"], _settings["bench"]
    sha = _resolve(rev)
    if sha is None:
        ctx.note(f"baseline {rev!r} not measured: git or that commit is missing here (a shallow clone?)")
        return []
    issue = _resolve(ISSUE_START)
    short = sha[:7]
    system = f"derecho-actors @{short} ({'issue start' if sha == issue else 'baseline'})"
    if not security.use_tls():
        system += " (insecure)"
    tmp = Path(tempfile.mkdtemp(prefix="derecho-bench-baseline-"))
    tree = tmp / "tree"
    added = False
    try:
        r = _git("worktree", "add", "--detach", str(tree), sha, timeout=300)
        if r.returncode != 0:
            ctx.note(f"baseline {short} not measured: git worktree add failed: {r.stderr.strip()[:200]}")
            return []
        added = True
        env = _child_env(tree)
        wrong = _check_imports(tree, env)
        if wrong:
            ctx.note(f"baseline {short} not measured: {wrong}")
            return []
        timeout = ctx.pick(20 * 60, 60 * 60)
        tries = ["current", "own"] if mode == "current" else ["own"]
        shutil.copytree(tree / "bench", tmp / "own-bench")  # the old tree's own bench/, kept aside
        skip = shutil.ignore_patterns("results", "__pycache__", "*.png", "*.json", "*.log")
        for attempt in tries:
            shutil.rmtree(tree / "bench")
            if attempt == "current":  # the same measuring code on both sides
                shutil.copytree(ROOT / "bench", tree / "bench", ignore=skip)
            else:
                shutil.copytree(tmp / "own-bench", tree / "bench")
            out = tmp / f"out-{attempt}"
            ctx.say(f"  baseline {short} ({sha}) with {attempt} bench/: bench/run.py --only actor in {tree}")
            code = _run_bench(ctx, tree, env, out, tmp / f"run-{attempt}.log", timeout)
            rows: list[Row] = []
            if (out / "results.json").exists():
                rows, notes, machine = _rows_from(out / "results.json")
                for n in notes:
                    ctx.note(f"baseline: {n}")
                if machine.get("git_commit") not in (None, sha):
                    ctx.note(f"baseline: the child ran at {machine.get('git_commit')}, not {sha}")
            ok = [r for r in rows if "error" not in r]
            if ok or attempt == tries[-1]:
                if not ok:
                    tail = (tmp / f"run-{attempt}.log").read_text(errors="replace")[-600:]
                    ctx.note(f"baseline {short}: no row measured (exit {code}); log tail: {tail}")
                break
            ctx.note(f"baseline {short}: this checkout's bench/ did not run against it (exit {code}); using its own")
        for row in rows:
            row.update(system=system, baseline_rev=sha, baseline_bench=attempt)
            if "cpu_us_client" in row:
                ctx.say(f"  baseline {row.get('mode')}: CPU µs/call {cpu_label(row)}")
        return rows
    finally:
        if added:
            _git("worktree", "remove", "--force", str(tree), timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _git("worktree", "prune")
        except (OSError, subprocess.SubprocessError):
            pass
