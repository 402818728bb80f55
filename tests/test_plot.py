import sys

from flow.cli import main
from flow.events import EpochEnd, Validation
from flow.plot import curves


def test_curves_per_metric_and_split_with_resumed_epochs_kept_once():
    events = [EpochEnd(0, [("accuracy", 0.5)], 2.0, 100, 2), Validation(0, [("accuracy", 0.4)], 50),
              EpochEnd(1, [("accuracy", 0.7)], 4.0, 100, 2),
              EpochEnd(1, [("accuracy", 0.8)], 5.0, 100, 2)]  # epoch 1 again, after a resume
    metrics, speed = curves(events)
    assert metrics == {"accuracy": {"train": {0: 0.5, 1: 0.8}, "validation": {0: 0.4}}}
    assert speed == {0: 50.0, 1: 20.0}


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(["plot", str(tmp_path / "run-events.msgpack"), "-o", str(tmp_path / "c.png")]) == 1
    assert "pip install 'flow[plot]'" in capsys.readouterr().err
