"""Files vldft's commands read besides its code: the lmms-eval task YAMLs and ``pins.txt``
(``eval/``), the bundled demo data (``data/geo_demo``), the configs (``configs/``) and the
shipped prior checkpoint the demo fine-tunes (``priors/``).

In the repository they stay where they are (``eval/``, ``data/``, ``configs/`` next to
``vldft/``). A wheel or sdist install carries a copy inside the package, ``vldft/_bundled/``
(written by ``setup.py``'s ``build_py``; ``MANIFEST.in`` puts the originals in the sdist).
``resource(name)`` returns the installed copy when there is one, else the checkout's file:

    from vldft.resources import resource
    resource("eval")                     # the task YAMLs (lmms-eval --include_path)
    resource("configs/demo.yaml")        # python -m vldft.train "$(python -c ...)"
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED = PACKAGE_DIR / "_bundled"  # an installed wheel's copy
CHECKOUT = PACKAGE_DIR.parent  # a source checkout (editable install, PYTHONPATH=.)
# What the wheel carries: top-level folder -> glob patterns (setup.py reads this dict)
BUNDLE = {
    "eval": ["*.yaml", "*.txt"],
    "data": ["README.md", "geo_demo/*.jsonl", "geo_demo/images/*.png"],
    "configs": ["*.yaml", "accelerate/*.yaml", "recipes/*.yaml"],
    "priors": ["*/*.json", "*/*.safetensors", "*/*.jinja", "*/README.md"],
}


def resource(name: str) -> Path:
    """Path of a bundled file or folder, e.g. ``"eval"`` or ``"configs/demo.yaml"``: the
    installed package's copy first, the repository checkout's second. A name that exists in
    neither still gets a path (the installed one if this is an installed package), so that
    the error that follows names where it was looked for."""
    top = name.replace("\\", "/").split("/")[0]
    if top not in BUNDLE:
        raise ValueError(f"unknown resource {name!r}: it must be under one of {sorted(BUNDLE)}")
    for root in (BUNDLED, CHECKOUT):
        if (root / name).exists():
            return root / name
    return (BUNDLED if BUNDLED.is_dir() else CHECKOUT) / name


def hint(path: str | Path) -> str:
    """`` (vldft's own copy: FILE)`` when a missing relative path such as
    ``configs/demo.yaml`` or ``data/geo_demo/heldout.jsonl`` names a file vldft ships (an
    installed package keeps them in site-packages, not in the working directory), else ''."""
    path = Path(path)
    if path.is_absolute():  # as typed, relative to the working directory
        if not path.is_relative_to(Path.cwd()):
            return ""
        path = path.relative_to(Path.cwd())
    parts = path.parts  # a path that starts with one of the bundle's folders
    if len(parts) < 2 or parts[0] not in BUNDLE:
        return ""
    found = resource("/".join(parts))
    return f" (vldft's own copy: {found})" if found.is_file() else ""
