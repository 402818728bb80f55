"""flow: MXNet's fit.py training pipeline as Trio actors on PyTorch, reading MXNet RecordIO.

    import flow, trio

    config = flow.load_config("examples/train.toml", ["train.num_epochs=2"])

    async def main():
        async with flow.open_run(config) as run:
            async for event in run.events():
                print(event)
            print(await run.wait())

    trio.run(main)

Names are imported on first use, so `import flow` (and the CLI) stays quick and torch loads
only when a run needs it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "flow.config",
    "load_config": "flow.config",
    "config_from_dict": "flow.config",
    "FlowError": "flow.errors",
    "ConfigError": "flow.errors",
    "open_run": "flow.run",
    "train": "flow.run",
    "Run": "flow.run",
    "RunResult": "flow.run",
    "score": "flow.inference",
    "predict": "flow.inference",
    "Predictions": "flow.inference",
    "log_run": "flow.console",
    "test_io": "flow.io_speed:measure",
    "read_events": "flow.event_log",
    "events": "flow.events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'flow' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        value = getattr(module, attribute)
    else:
        value = module if module_name.rsplit(".", 1)[1] == name else getattr(module, name)
    globals()[name] = value
    return value
