import json
import os
import signal
import subprocess
import sys
import textwrap

import msgpack
import pytest

from flow.cli import main
from flow.errors import FlowError
from flow.event_log import read_event_records, read_events
from flow.events import BatchEnd, EpochEnd, event_to_dict


def write_log(path, events):
    with open(path, "wb") as file:
        for event in events:
            file.write(msgpack.packb(event_to_dict(event)))


def test_round_trip_and_torn_last_event_is_ignored(tmp_path):
    path = tmp_path / "run-events.msgpack"
    events = [BatchEnd(0, 20, 1000.0, [("accuracy", 0.5)], 0.1, 10), EpochEnd(0, [("accuracy", 0.6)], 2.5, 640, 10)]
    write_log(path, events)
    assert read_events(path) == events
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])  # a crash in the middle of the last event
    assert read_events(path) == events[:1]


def test_logs_written_before_a_field_was_added_still_read(tmp_path):
    path = tmp_path / "old-events.msgpack"
    with open(path, "wb") as file:  # as flow wrote them before RunStarted.batches_per_epoch and BatchEnd.since_batch
        file.write(msgpack.packb({"event": "RunStarted", "begin_epoch": 0, "num_epochs": 2, "devices": ["cpu"],
                                  "kv_store": "local", "num_parameters": 10}))
        file.write(msgpack.packb({"event": "BatchEnd", "epoch": 0, "batch": 20, "samples_per_second": 1000.0,
                                  "metrics": [["accuracy", 0.5]], "lr": 0.1}))
    started, batch_end = read_events(path)
    assert started.num_epochs == 2 and started.batches_per_epoch == 0
    assert batch_end.metrics == [("accuracy", 0.5)] and batch_end.since_batch == 0


def test_garbage_names_the_offset(tmp_path):
    path = tmp_path / "bad.msgpack"
    whole_event = msgpack.packb({"event": "RunFinished", "epochs": 1, "updates": 2, "seconds": 3.0})
    path.write_bytes(whole_event + b"\xc1")  # 0xc1: a byte msgpack never uses
    with pytest.raises(FlowError, match=rf"bad.msgpack: at byte {len(whole_event)}: not a msgpack event"):
        list(read_event_records(path))


def test_flow_events_prints_json_lines(tmp_path, capsys):
    path = tmp_path / "run-events.msgpack"
    write_log(path, [EpochEnd(3, [("accuracy", 0.75)], 1.5, 64, 1)])
    assert main(["events", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"event": "EpochEnd", "epoch": 3, "metrics": [["accuracy", 0.75]], "seconds": 1.5,
                      "samples": 64, "batches": 1}
    assert main(["events", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "EpochEnd epoch=3 metrics=accuracy:0.75 seconds=1.5 samples=64 batches=1"


def test_log_of_a_run_killed_mid_epoch_reads_back_every_event_before_the_kill(tmp_path):
    """A real run in a child process, SIGKILLed once it has logged a few batch events."""
    prefix = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, torch, trio
        from flow.config import config_from_dict
        from flow.run import open_run

        def data(epoch):
            async def batches():
                for index in range(10**6):
                    if index % 5 == 0:
                        await trio.sleep(0.001)
                    yield torch.randn(8, 3, 4, 4), torch.randint(0, 2, (8,)).float()
            return batches()

        config = config_from_dict({{"data": {{"image_shape": [3, 4, 4], "num_classes": 2, "batch_size": 8}},
                                    "model": {{"network": "mlp"}}, "train": {{"num_epochs": 1, "disp_batches": 5}},
                                    "checkpoint": {{"model_prefix": {str(prefix)!r}}}}})

        async def main():
            async with open_run(config, train_data=data) as run:
                async for event in run.events():
                    print(type(event).__name__, flush=True)

        trio.run(main)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    seen = []
    for line in child.stdout:
        seen.append(line.strip())
        if seen.count("BatchEnd") == 5:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    logged = [record["event"] for record in read_event_records(f"{prefix}-events.msgpack")]
    assert logged[0] == "RunStarted"
    # The bus logs each event before any subscriber sees it: everything the child printed is there.
    assert logged[: len(seen)] == seen
