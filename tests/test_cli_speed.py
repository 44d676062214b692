"""Every console script answers ``--help`` (and the evaluation CLI its argument errors) before
torch, transformers, accelerate, datasets or lmms-eval load: exactly (which modules a subprocess
imported) and in time (against ``python -c "import torch"`` measured in the same test, so a
loaded CPU slows both sides alike)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT

HEAVY = ("torch", "transformers", "accelerate", "datasets", "lmms_eval")


def console_scripts() -> dict[str, str]:
    """``name -> "module:function"`` of pyproject.toml's [project.scripts]."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(vldft-[\w-]+)\s*=\s*"([\w.]+:\w+)"', block, re.M))


SCRIPTS = console_scripts()
# what each command is asked: --help, plus the evaluation CLI's cheap argument errors
CASES = [(name, ["--help"]) for name in SCRIPTS] + [
    ("vldft-eval", ["--model", "runs/demo/final"]),  # no tasks
    ("vldft-eval", ["--model", "no-such-org/no-such-model", "--tasks", "geoqa"]),  # offline hub
    ("vldft-eval", ["--model", "/no/such/checkpoint", "--suite", "paper"]),
    ("vldft-eval", ["--model", "m", "--tasks", "geoqa", "--limit", "0"]),
    ("vldft-data", ["validate", "x.jsonl", "train.lr=1"]),  # overrides need a config
]
# run the entry point as its console script would, then report what got imported
PROBE = """
import sys
from {module} import {func} as entry
sys.argv = [{name!r}, *{argv!r}]
try:
    entry({argv!r})
except SystemExit as e:  # print its message as the interpreter would
    if e.code is not None and not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def run(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network probe: the timing is ours
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    return time.perf_counter() - start, done


def script(name: str) -> list[str]:
    """The installed console script, else the same entry point through the interpreter."""
    exe = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(exe):
        return [exe]
    module, func = SCRIPTS[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func} as f; "
            f"sys.argv[0] = {name!r}; sys.exit(f())"]


def test_every_console_script_is_covered():
    assert set(SCRIPTS) == {"vldft-train", "vldft-eval", "vldft-data", "vldft-probe",
                            "vldft-compare", "vldft-collate"}


@pytest.mark.parametrize("name, argv", CASES, ids=[" ".join([n, *a]) for n, a in CASES])
def test_no_heavy_import_before_the_arguments_are_checked(name, argv):
    module, func = SCRIPTS[name].split(":")
    _, done = run([sys.executable, "-c", PROBE.format(module=module, func=func, name=name,
                                                      argv=argv, heavy=HEAVY)])
    heavy = done.stderr.rsplit("HEAVY=", 1)[-1].strip()
    assert heavy == "", f"{name} {argv} imported {heavy}:\n{done.stderr[-2000:]}"
    if argv != ["--help"]:  # an argument error: one line, no traceback
        lines = [x for x in done.stderr.splitlines() if not x.startswith("HEAVY=")]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


def test_help_and_argument_errors_answer_well_before_torch_loads():
    """Each answer against this machine's own speed: far below the time of ``import torch``
    (measured here) and below max(1.5 s, 10 x a bare interpreter start), both of which a loaded
    CPU stretches as it stretches the commands. A slow answer is timed once more (best of two)
    before it counts."""
    bare = min(run([sys.executable, "-c", "pass"])[0] for _ in range(2))
    torch_s = run([sys.executable, "-c", "import torch"])[0]
    limit = min(0.5 * torch_s, max(1.5, 10 * bare))
    slow = {}
    for name, argv in CASES:
        took, done = run([*script(name), *argv])
        assert "Traceback" not in done.stderr, done.stderr
        if took > limit:
            took = min(took, run([*script(name), *argv])[0])
        if took > limit:
            slow[" ".join([name, *argv])] = round(took, 2)
    assert not slow, (f"slower than {limit:.2f} s (import torch {torch_s:.2f} s, python -c pass "
                      f"{bare:.2f} s): {slow}")
