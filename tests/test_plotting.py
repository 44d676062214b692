"""matplotlib is optional: every plot goes through ``vldft.plotting.pyplot``, which uses the
file-only Agg backend, skips optional figures with a one-line install hint when matplotlib is
missing, and raises a clear ImportError for figures that were asked for explicitly."""

import sys

import pytest

from vldft.plotting import INSTALL_HINT, pyplot


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` fails as it does where the plot extra is not installed."""
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)


def test_pyplot_uses_the_agg_backend():
    import matplotlib

    plt = pyplot()
    assert plt is sys.modules["matplotlib.pyplot"]
    assert matplotlib.get_backend().lower() == "agg"


def test_optional_figures_are_skipped_with_the_install_hint(no_matplotlib, capsys):
    assert pyplot(skip="compare.png") is None
    assert capsys.readouterr().out == (
        '[vldft] matplotlib not installed: no compare.png (pip install "vldft[plot]")\n')


def test_a_required_figure_raises_with_the_install_hint(no_matplotlib):
    with pytest.raises(ImportError, match=r"matplotlib is not installed") as e:
        pyplot()
    assert INSTALL_HINT in str(e.value)


def test_every_writer_skips_its_figure_and_keeps_its_other_outputs(no_matplotlib, tmp_path,
                                                                   capsys):
    """The training plots, the probe's histogram and the study's curves: without matplotlib
    each caller writes what it can and says which figure it left out."""
    from vldft.compare import plot
    from vldft.diagnostics import curve_figure, write_plots
    from vldft.eval.report import Run, bar_chart
    from vldft.probe_report import write_outputs

    history = [{"step": 1, "objective": "sft", "loss": 1.0, "ce": 1.0}]
    assert write_plots(tmp_path, history, tmp_path / "none.jsonl") == []
    assert "no plots" in capsys.readouterr().out
    assert write_outputs({"overall": {}}, tmp_path / "probe") == [tmp_path / "probe/probe.json"]
    assert (tmp_path / "probe/probe.json").is_file()
    assert "no probe_probs.png" in capsys.readouterr().out
    assert plot([], tmp_path / "compare.png") is None
    assert "no compare.png" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.png"))
    with pytest.raises(ImportError, match="vldft\\[plot\\]"):
        curve_figure(history)
    with pytest.raises(ImportError, match="vldft\\[plot\\]"):
        bar_chart([Run("a", {"t": 1.0}, {"t": 1})], tmp_path / "bars.png")
