import json
import os
import signal
import subprocess
import sys
import textwrap

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.cli import main
from flow.errors import FlowError
from flow.event_log import EventLogWriter, read_event_records, read_events
from flow.events import EVENT_TYPES, BatchEnd, EpochEnd, RunFinished, event_to_dict
from tests.fixtures import fuzz_examples


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
    write_log(path, [EpochEnd(3, [("accuracy", 0.75)], 1.5, 64, 1, 0.125)])
    assert main(["events", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"event": "EpochEnd", "epoch": 3, "metrics": [["accuracy", 0.75]], "seconds": 1.5,
                      "samples": 64, "batches": 1, "lr": 0.125}
    assert main(["events", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (
        "EpochEnd epoch=3 metrics=accuracy:0.75 seconds=1.5 samples=64 batches=1 lr=0.125")


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


def test_flow_events_reads_past_nothing_but_reports_a_torn_last_event(tmp_path, capsys):
    path = tmp_path / "run-events.msgpack"
    events = [EpochEnd(0, [("accuracy", 0.5)], 1.0, 64, 1), EpochEnd(1, [("accuracy", 0.75)], 1.0, 64, 1)]
    write_log(path, events)
    whole = path.read_bytes()
    torn_at = len(msgpack.packb(event_to_dict(events[0])))
    path.write_bytes(whole[:-5])
    assert main(["events", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["EpochEnd epoch=0 metrics=accuracy:0.5 seconds=1 samples=64 batches=1 lr=0"]
    assert err == (f"flow events: warning: {path}: at byte {torn_at}: a torn last event "
                   f"({len(whole) - 5 - torn_at} bytes: a crash in the middle of a write)\n")
    torn = []
    assert read_events(path, on_torn_tail=torn.append) == events[:1] and len(torn) == 1


def test_a_writer_cuts_a_torn_tail_before_appending(tmp_path, caplog):
    """A resumed run appends to the log a crash tore: the log reads whole, the torn event gone."""
    path = tmp_path / "run-events.msgpack"
    events = [EpochEnd(0, [("accuracy", 0.5)], 1.0, 64, 1), EpochEnd(1, [("accuracy", 0.75)], 1.0, 64, 1)]
    write_log(path, events)
    path.write_bytes(path.read_bytes()[:-5])
    writer = EventLogWriter(path)
    writer.write(RunFinished(2, 2, 3.0))
    writer.close()
    torn = []
    assert read_events(path, on_torn_tail=torn.append) == [events[0], RunFinished(2, 2, 3.0)]
    assert torn == []
    assert "a torn last event" in caplog.text and "removed it before appending" in caplog.text


def test_a_full_disk_is_one_flow_error_and_leaves_no_torn_event():
    writer = EventLogWriter("/dev/full")
    with pytest.raises(FlowError, match="/dev/full: at byte 0: cannot write the event log: No space left on device"):
        writer.write(RunFinished(1, 2, 3.0))
    writer.close()


def test_a_file_size_limit_cuts_no_event_in_half(tmp_path):
    """With RLIMIT_FSIZE the OS writes part of the event that crosses the limit (and raises EFBIG
    on the next write): the writer takes that part back, so the log holds only whole events."""
    path = tmp_path / "run-events.msgpack"
    script = textwrap.dedent(f"""
        import resource
        from flow.event_log import EventLogWriter
        from flow.errors import FlowError
        from flow.events import RunFinished
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        writer = EventLogWriter({str(path)!r})
        try:
            for updates in range(100):
                writer.write(RunFinished(1, updates, 3.0))
        except FlowError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cannot write the event log: File too large" in result.stdout
    torn = []
    events = read_events(path, on_torn_tail=torn.append)
    assert torn == [] and len(events) == 100 // len(msgpack.packb(event_to_dict(RunFinished(1, 0, 3.0))))
    assert path.stat().st_size == sum(len(msgpack.packb(event_to_dict(event))) for event in events)


@pytest.mark.parametrize("record, message", [
    (7, "not an event record"),
    ({"event": 5}, "not an event record"),
    ({"event": ["EpochEnd"]}, "not an event record"),
    ({"event": "Nope"}, "unknown event 'Nope'"),
    ({"event": "RunFinished", "epochs": 1, "updates": 2}, "RunFinished: .*missing 1 required positional argument"),
    ({"event": "RunFinished", "epochs": "1", "updates": 2, "seconds": 1.0}, "RunFinished.epochs: expected <class 'int'>"),
    ({"event": "EpochEnd", "epoch": 0, "metrics": 3, "seconds": 1.0, "samples": 1, "batches": 1}, "EpochEnd.metrics"),
    ({"event": "EpochEnd", "epoch": 0, "metrics": [["a"]], "seconds": 1.0, "samples": 1, "batches": 1}, "EpochEnd.metrics"),
    ({"event": "RunFinished", "epochs": 1, "updates": 2, "seconds": 1.0, "extra": 1}, "RunFinished has no field 'extra'"),
])
def test_read_events_on_records_that_are_no_events_is_a_flow_error_naming_the_offset(tmp_path, record, message):
    path = tmp_path / "bad-events.msgpack"
    first = msgpack.packb(event_to_dict(RunFinished(1, 2, 3.0)))
    path.write_bytes(first + msgpack.packb(record))
    with pytest.raises(FlowError, match=rf"bad-events.msgpack: at byte {len(first)}: {message}"):
        read_events(path)


@settings(max_examples=fuzz_examples(100), deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["event", "epoch", "metrics", "seconds", "samples", "batches", "x"]), inner,
                        max_size=6), max_leaves=12),
       st.sampled_from(list(EVENT_TYPES)))
def test_read_events_on_any_msgpack_data_returns_events_or_a_flow_error(tmp_path_factory, record, name):
    if isinstance(record, dict) and "event" not in record:
        record = {"event": name, **record}
    path = tmp_path_factory.mktemp("fuzz") / "events.msgpack"
    path.write_bytes(msgpack.packb(record))
    try:
        read_events(path)
    except FlowError:
        pass
