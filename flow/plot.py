"""Draw a run's curves from its event log: `flow plot PREFIX-events.msgpack -o curves.png`.

One panel per metric (train and validation per epoch) and one for speed (samples/s per epoch).
Needs matplotlib: `pip install 'flow[plot]'`.
"""

from __future__ import annotations

import argparse

from flow.errors import FlowError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="the {model_prefix}-events.msgpack file of a run")
    parser.add_argument("-o", "--output", default="curves.png", help="the image to write (PNG, SVG, PDF...)")


def curves(events: list) -> tuple[dict[str, dict[str, dict[int, float]]], dict[int, float]]:
    """({metric: {"train"|"validation": {epoch: value}}}, {epoch: samples/s}); a resumed epoch keeps its last value."""
    from flow.events import EpochEnd, Validation

    metrics: dict[str, dict[str, dict[int, float]]] = {}
    speed: dict[int, float] = {}
    for event in events:
        if isinstance(event, (EpochEnd, Validation)):
            split = "train" if isinstance(event, EpochEnd) else "validation"
            for name, value in event.metrics:
                metrics.setdefault(name, {"train": {}, "validation": {}})[split][event.epoch] = value
        if isinstance(event, EpochEnd) and event.seconds > 0:
            speed[event.epoch] = event.samples / event.seconds
    return metrics, speed


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise FlowError("flow plot needs matplotlib: pip install 'flow[plot]'") from None
    from flow.event_log import read_events
    from flow.events_command import torn_tail_warning

    metrics, speed = curves(read_events(args.log, on_torn_tail=torn_tail_warning("plot")))
    if not metrics and not speed:
        raise FlowError("no epoch has ended in this log yet: nothing to plot", args.log)
    panels = len(metrics) + 1
    figure, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    for axis, (name, splits) in zip(axes[0], metrics.items()):
        for split, values in splits.items():
            if values:
                axis.plot(list(values), list(values.values()), marker="o", label=split)
        axis.set_title(name)
        axis.legend()
    speed_axis = axes[0][-1]
    speed_axis.plot(list(speed), list(speed.values()), marker="o")
    speed_axis.set_title("speed (samples/s)")
    for axis in axes[0]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(args.output)
    print(f"plot: wrote {args.output}")
    return 0
