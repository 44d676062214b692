"""matplotlib, imported only when a plot is drawn: it is an optional extra (``vldft[plot]``).

Every figure vldft writes (training curves, probability histograms, the probe's histograms, the
objective study's curves, the benchmark bar chart) gets ``pyplot`` from :func:`pyplot`, so the
guard, the file-only backend and the install hint live in one place.
"""

from __future__ import annotations

INSTALL_HINT = 'pip install "vldft[plot]"'


def pyplot(skip: str | None = None):
    """``matplotlib.pyplot`` with the Agg backend (writes image files; needs no display).

    When matplotlib is not installed: with ``skip`` (what the caller leaves out then, e.g.
    ``"compare.png"``) prints ``[vldft] matplotlib not installed: no <skip> (pip install
    "vldft[plot]")`` and returns None; without it, raises ImportError with that install hint.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        if skip is None:
            raise ImportError(f"matplotlib is not installed; plotting needs it ({INSTALL_HINT})"
                              ) from e
        print(f"[vldft] matplotlib not installed: no {skip} ({INSTALL_HINT})")
        return None
    return plt
