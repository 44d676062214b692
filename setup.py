"""Packaging hook (everything else is in pyproject.toml): copy the files vldft's commands read
(``vldft.resources.BUNDLE``: eval/ task YAMLs + pins.txt, data/geo_demo, configs/, priors/) into the
built package as ``vldft/_bundled/``, so that a wheel install has them. ``MANIFEST.in`` puts
the same files into the sdist, so a wheel built from the sdist has them too."""

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def bundle_patterns() -> dict[str, list[str]]:
    """``BUNDLE`` from vldft/resources.py, read without importing vldft (torch etc.)."""
    tree = ast.parse((ROOT / "vldft" / "resources.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "BUNDLE":
            return ast.literal_eval(node.value)
    raise RuntimeError("vldft/resources.py: BUNDLE not found")


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's files (vldft.resources)
        for top, patterns in bundle_patterns().items():
            files = sorted({p for pat in patterns for p in (ROOT / top).glob(pat) if p.is_file()})
            if not files:
                raise RuntimeError(f"nothing to bundle under {top}/ ({patterns})")
            for src in files:
                dst = Path(self.build_lib) / "vldft" / "_bundled" / src.relative_to(ROOT)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithResources})
