"""The loader actor: every record once, in a seeded order, in MXNet's batches, with bounded memory."""

import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
import trio

from flow import augment, batch_arrays
from flow.actors import loader as loader_module
from flow.actors.loader import Batch, EpochEnd, LoaderSettings, loader, record_table
from flow.augment import AugmentSettings
from flow.errors import ConfigError, ImageError, RecordIOError
from flow.image import decode, encode
from flow.recordio import MAGIC, IndexedRecordReader, IRHeader, RecordWriter, pack, pack_img, unpack
from tests.fixtures import MXNET_FIXTURES
from tests.test_image import claiming
from tests.test_run import threads_running_flow_code

MEAN = (123.68, 116.779, 103.939)
STD = (58.393, 57.12, 57.375)


def write_numbered(path, count, size=(8, 8), broken=None):
    """A .rec (+ .idx) of lossless images whose first pixel spells the record's number, which is also
    its label; `broken` maps numbers to payloads written in place of the image record."""
    broken = broken or {}
    with RecordWriter(path, index=True) as writer:
        for number in range(count):
            header = IRHeader(0, float(number), number, 0)
            if number in broken:
                writer.write(broken[number])
                continue
            image = np.full((*size, 3), 200, np.uint8)
            image[0, 0] = (number % 256, number // 256, 0)
            writer.write(pack_img(header, image, quality=1, encoding=".png"))
    return path


def numbered(path, **changes):
    settings = LoaderSettings(path=str(path), data_shape=(3, 8, 8), batch_size=16, nthreads=2, layout="uint8_nhwc")
    return dataclasses.replace(settings, **changes)


def numbers_of(batch):
    """The record number of each real (not pad) sample of a uint8 batch."""
    corner = batch.data.numpy()[: len(batch.data) - batch.pad, 0, 0].astype(int)
    return (corner[:, 0] + 256 * corner[:, 1]).tolist()


async def collect(settings, begin_epoch=0, num_epochs=1):
    send_channel, receive_channel = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loader, settings, record_table(settings), send_channel, begin_epoch, num_epochs)
        async with receive_channel:
            return [message async for message in receive_channel]


def by_epoch(messages):
    """{epoch: [record numbers in delivery order]}, checking each epoch ends with its EpochEnd."""
    epochs, current = {}, []
    for message in messages:
        if isinstance(message, EpochEnd):
            epochs[message.epoch] = current
            current = []
        else:
            current += numbers_of(message)
    assert not current
    return epochs


def batches(messages):
    return [message for message in messages if isinstance(message, Batch)]


# --------------------------------------------------------------------------- the MXNet fixtures


async def test_every_record_of_an_epoch_once_with_its_label():
    path = MXNET_FIXTURES / "train.rec"
    expected = Counter()
    with IndexedRecordReader(path) as reader:
        for position in range(len(reader)):
            header, payload = unpack(reader.read_position(position))
            expected[hashlib.sha1(decode(payload).tobytes()).digest(), float(header.label)] += 1
    settings = LoaderSettings(path=str(path), data_shape=(3, 64, 64), batch_size=128, nthreads=2, shuffle=True,
                              layout="uint8_nhwc")
    messages = await collect(settings)
    delivered = Counter()
    for batch in batches(messages):
        assert batch.data.shape == (128, 64, 64, 3) and batch.data.dtype == torch.uint8
        assert batch.label.shape == (128,)
        for index in range(128 - batch.pad):
            delivered[hashlib.sha1(batch.data[index].numpy().tobytes()).digest(), float(batch.label[index])] += 1
    assert delivered == expected
    assert messages[-1] == EpochEnd(0, 7, 800)
    assert [batch.pad for batch in batches(messages)] == [0] * 6 + [7 * 128 - 800]


async def test_float_output_is_the_normalized_rgb_image():
    manifest = json.loads((MXNET_FIXTURES / "manifest.json").read_text())
    settings = LoaderSettings(path=str(MXNET_FIXTURES / "train.rec"), data_shape=(3, 64, 64), batch_size=100,
                              nthreads=2, layout="uint8_nhwc", mean=MEAN, std=STD)
    raw = batches(await collect(settings))[0]
    normalized = batches(await collect(dataclasses.replace(settings, layout="float32_nchw")))[0]
    assert normalized.data.shape == (100, 3, 64, 64) and normalized.data.is_contiguous()
    expected = (raw.data.numpy() - np.float32(MEAN)) / np.float32(STD)
    assert np.allclose(normalized.data.numpy(), expected.transpose(0, 3, 1, 2), atol=1e-4)
    low, high = (0 - np.array(MEAN)) / STD, (255 - np.array(MEAN)) / STD
    per_channel = normalized.data.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    assert (per_channel.min(axis=1) >= low - 1e-4).all() and (per_channel.max(axis=1) <= high + 1e-4).all()
    for record in manifest["decoded_rgb"]:  # MXNet's own decode; JPEG decoders differ by a level or two
        image = raw.data.numpy()[record["id"]]
        assert raw.label[record["id"]] == record["label"]
        assert np.abs(image[0, 0].astype(int) - record["pixel_0_0_rgb"]).max() <= 3
        assert np.allclose(image.reshape(-1, 3).mean(axis=0), record["rgb_mean"], atol=1.0)


async def test_multi_label_records_give_a_label_row_per_sample():
    manifest = json.loads((MXNET_FIXTURES / "manifest.json").read_text())
    settings = LoaderSettings(path=str(MXNET_FIXTURES / "multilabel.rec"), data_shape=(3, 32, 32), batch_size=20,
                              nthreads=2)
    messages = await collect(settings)
    first = batches(messages)[0]
    assert first.label.shape == (20, 3) and first.label.dtype == first.data.dtype
    for record in manifest["multilabel"]["first"]:
        assert np.allclose(first.label[record["id"]].numpy(), record["label"])
    assert messages[-1] == EpochEnd(0, 3, 50)
    with pytest.RaisesGroup(pytest.RaisesExc(RecordIOError, match="has 3 labels, expected 2")):
        await collect(dataclasses.replace(settings, label_width=2))


# --------------------------------------------------------------------------- order, shards, last batch


async def test_shuffle_differs_by_epoch_repeats_by_seed_and_replays_on_resume(tmp_path):
    path = write_numbered(tmp_path / "n.rec", 64)
    settings = numbered(path, shuffle=True, seed=3)
    run = by_epoch(await collect(settings, num_epochs=3))
    assert all(sorted(order) == list(range(64)) for order in run.values())
    assert run[0] != run[1] != run[2]
    assert by_epoch(await collect(settings, num_epochs=3)) == run
    assert by_epoch(await collect(dataclasses.replace(settings, seed=4), num_epochs=1))[0] != run[0]
    assert by_epoch(await collect(settings, begin_epoch=2))[2] == run[2]
    assert by_epoch(await collect(dataclasses.replace(settings, shuffle=False)))[0] == list(range(64))


async def test_pad_fills_the_last_batch_from_the_start_of_the_epoch(tmp_path):
    path = write_numbered(tmp_path / "n.rec", 50)
    messages = await collect(numbered(path, shuffle=True))
    sent = batches(messages)
    assert [batch.pad for batch in sent] == [0, 0, 0, 14]
    order = [number for batch in sent for number in numbers_of(batch)]
    assert sorted(order) == list(range(50))
    last = sent[-1].data.numpy()[:, 0, 0].astype(int)
    assert (last[2:, 0] + 256 * last[2:, 1]).tolist() == order[:14]
    assert sent[-1].label.tolist()[2:] == order[:14]
    assert messages[-1] == EpochEnd(0, 4, 50)
    tiny = batches(await collect(numbered(write_numbered(tmp_path / "tiny.rec", 5))))
    assert len(tiny) == 1 and tiny[0].pad == 11
    assert tiny[0].label.tolist() == [0, 1, 2, 3, 4] * 3 + [0]


async def test_roll_over_carries_the_leftovers_into_the_next_epoch(tmp_path):
    path = write_numbered(tmp_path / "n.rec", 50)
    settings = numbered(path, shuffle=True, last_batch="roll_over")
    # Each epoch's order: the whole epoch as one batch.
    orders = by_epoch(await collect(dataclasses.replace(settings, batch_size=50, last_batch="pad"), num_epochs=3))
    messages = await collect(settings, num_epochs=3)
    assert all(batch.pad == 0 for batch in batches(messages))
    ends = [message for message in messages if isinstance(message, EpochEnd)]
    assert [(end.batches, end.samples) for end in ends] == [(3, 48), (3, 48), (3, 48)]
    stream = [number for batch in batches(messages) for number in numbers_of(batch)]
    assert stream == (orders[0] + orders[1] + orders[2])[:144]
    first_of_epoch_1 = batches(messages)[3]
    assert numbers_of(first_of_epoch_1)[:2] == orders[0][48:]
    resumed = await collect(settings, begin_epoch=1, num_epochs=2)
    assert by_epoch(resumed) == {1: by_epoch(messages)[1], 2: by_epoch(messages)[2]}


async def test_epoch_batches_cut_a_longer_shard_short_and_cycle_a_shorter_one(tmp_path):
    path = write_numbered(tmp_path / "n.rec", 33)  # two shards: 16 records (2 batches of 8) and 17 (3)
    shard_0, shard_1 = (numbered(path, batch_size=8, num_parts=2, part_index=part) for part in (0, 1))
    # fit.py's epoch size for 2 workers, ceil(int(33 / 2) / 8) = 2: shard 1's third batch (record 32
    # and 7 pads) is left out of the epoch.
    messages = await collect(dataclasses.replace(shard_1, epoch_batches=2))
    assert by_epoch(messages) == {0: list(range(16, 32))} and messages[-1] == EpochEnd(0, 2, 16)
    assert by_epoch(await collect(dataclasses.replace(shard_0, epoch_batches=2))) == {0: list(range(16))}
    # Fewer batches than asked for: the epoch's batches again from its first, pads and all.
    own = by_epoch(await collect(dataclasses.replace(shard_1, shuffle=True), num_epochs=2))
    resized = dataclasses.replace(shard_1, shuffle=True, epoch_batches=5)
    messages = await collect(resized, num_epochs=2)
    assert by_epoch(messages) == {epoch: own[epoch] + own[epoch][:16] for epoch in (0, 1)}
    assert [batch.pad for batch in batches(messages)] == [0, 0, 7, 0, 0] * 2
    assert by_epoch(await collect(resized, begin_epoch=1)) == {1: by_epoch(messages)[1]}
    with pytest.RaisesGroup(pytest.RaisesExc(ConfigError, match="shard 0 of 2 has no batch in epoch 0")):
        await collect(dataclasses.replace(shard_0, batch_size=32, last_batch="discard", epoch_batches=1))


# --------------------------------------------------------------------------- bad records and sizes


async def test_a_corrupt_image_is_an_error_naming_the_record(tmp_path):
    garbage = pack(IRHeader(0, 7.0, 7, 0), b"\x89PNG\r\n\x1a\n not really a png")
    path = write_numbered(tmp_path / "n.rec", 40, broken={7: garbage})
    with pytest.RaisesGroup(pytest.RaisesExc(ImageError, match=r"n\.rec: at byte \d+: record 7 \(#7 in the file\)")):
        await collect(numbered(path))


async def test_skip_bad_records_leaves_them_out_and_counts_them(tmp_path):
    garbage = pack(IRHeader(0, 7.0, 7, 0), b"\xff\xd8 not really a jpeg")
    path = write_numbered(tmp_path / "n.rec", 40, broken={7: garbage, 20: b"short"})
    with pytest.RaisesGroup(pytest.RaisesExc(RecordIOError, match="record 20 .* too short")):
        await collect(numbered(path))
    messages = await collect(numbered(path, skip_bad_records=True, shuffle=True), num_epochs=2)
    epochs = by_epoch(messages)
    for epoch in (0, 1):
        assert sorted(epochs[epoch]) == sorted(set(range(40)) - {7, 20})
    assert [message for message in messages if isinstance(message, EpochEnd)] == [
        EpochEnd(0, 3, 38, skipped=2), EpochEnd(1, 3, 38, skipped=2)]
    for batch in batches(messages):  # labels still belong to their images
        assert batch.label.tolist()[: len(batch.data) - batch.pad] == numbers_of(batch)


async def test_bombs_and_labels_that_are_no_class_ids_are_bad_records(tmp_path):
    """A record whose image claims more pixels than max_image_pixels is never decoded; one whose label
    is no class id below num_classes never reaches the loss: an error, or skipped and counted."""
    bomb = pack(IRHeader(0, 3.0, 3, 0), claiming(encode(np.zeros((8, 8, 3), np.uint8), ".jpg"), 30000, 30000))
    path = write_numbered(tmp_path / "n.rec", 40, broken={3: bomb})
    with pytest.RaisesGroup(pytest.RaisesExc(ImageError, match=r"record 3 \(#3 in the file\): image of 30000x30000 "
                                                               r"pixels .* over the limit of 1000000 pixels")):
        await collect(numbered(path, max_image_pixels=10**6))
    with pytest.RaisesGroup(pytest.RaisesExc(RecordIOError, match=r"record 30 \(#30 in the file\): label 30.0 is "
                                                                  r"not a class id: expected an integer in \[0, 30\)")):
        await collect(numbered(path, num_classes=30))
    messages = await collect(numbered(path, num_classes=30, skip_bad_records=True, max_image_pixels=10**6))
    assert sorted(by_epoch(messages)[0]) == sorted(set(range(30)) - {3})
    assert messages[-1] == EpochEnd(0, 2, 29, skipped=11)


async def test_records_split_around_the_magic_are_joined(tmp_path):
    path = tmp_path / "magic.rec"
    image = np.full((8, 8, 3), 200, np.uint8)
    image[0, 0] = (5, 0, 0)
    with RecordWriter(path, index=True) as writer:
        writer.write(pack_img(IRHeader(0, 5.0, 5, MAGIC), image, encoding=".png"))  # magic at an aligned offset
    with IndexedRecordReader(path) as reader:
        assert reader.read_at(0)[0] and len(path.read_bytes()) > len(reader.read_at(0)[0]) + 8  # several parts
    (batch,) = batches(await collect(numbered(path, batch_size=1)))
    assert numbers_of(batch) == [5] and batch.label.tolist() == [5.0]


async def test_larger_images_are_centre_cropped_and_smaller_ones_refused(tmp_path):
    path = tmp_path / "big.rec"
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    with RecordWriter(path, index=True) as writer:
        writer.write(pack_img(IRHeader(0, 1.0, 0, 0), image, encoding=".png"))
    (batch,) = batches(await collect(numbered(path, batch_size=1)))
    assert np.array_equal(batch.data.numpy()[0], image[2:10, 1:9])
    (resized,) = batches(await collect(numbered(path, batch_size=1, augment=AugmentSettings(resize=8))))
    assert resized.data.shape == (1, 8, 8, 3)
    with pytest.RaisesGroup(pytest.RaisesExc(ImageError, match="smaller than the output 16x16")):
        await collect(numbered(path, batch_size=1, data_shape=(3, 16, 16)))


@pytest.mark.parametrize("augmentation", [
    AugmentSettings(resize=72, rand_crop=True, rand_mirror=True, max_random_h=36, max_random_s=50,
                    max_random_l=50, max_rotate_angle=10, max_shear_ratio=0.1, max_aspect_ratio=0.25),
    AugmentSettings(resize=72, random_resized_crop=True, min_random_area=0.08, min_aspect_ratio=0.75,
                    max_aspect_ratio=4 / 3, brightness=0.4, contrast=0.4, saturation=0.4, pca_noise=0.1,
                    rand_mirror=True),
], ids=["level-3", "imagenet"])
async def test_augmented_batches_have_the_output_shape_and_range_and_repeat_by_seed(augmentation):
    settings = LoaderSettings(path=str(MXNET_FIXTURES / "val.rec"), data_shape=(3, 64, 64), batch_size=25,
                              nthreads=2, mean=MEAN, std=STD, augment=augmentation, seed=11, num_parts=4)
    first = batches(await collect(settings, num_epochs=2))
    assert len(first) == 4
    low, high = (0 - np.array(MEAN)) / STD, (255 - np.array(MEAN)) / STD
    for batch in first:
        data = batch.data.numpy()
        assert data.shape == (25, 3, 64, 64) and np.isfinite(data).all()
        per_channel = data.transpose(1, 0, 2, 3).reshape(3, -1)
        assert (per_channel.min(axis=1) >= low - 1e-4).all() and (per_channel.max(axis=1) <= high + 1e-4).all()
    again = batches(await collect(settings, num_epochs=2))
    assert all(np.array_equal(a.data.numpy(), b.data.numpy()) for a, b in zip(first, again))
    assert not np.array_equal(first[0].data.numpy(), first[2].data.numpy())  # epoch 1 draws anew
    plain = batches(await collect(dataclasses.replace(settings, augment=AugmentSettings(resize=72))))
    assert not np.array_equal(first[0].data.numpy(), plain[0].data.numpy())


async def test_a_held_batch_is_never_refilled_and_dropped_ones_are_reused(tmp_path):
    settings = numbered(write_numbered(tmp_path / "n.rec", 160), batch_size=8, prefetch=2)
    send_channel, receive_channel = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loader, settings, record_table(settings), send_channel, 0, 2)
        held = await receive_channel.receive()
        view = held.data[2:4]  # a view keeps the memory the consumer's too
        held_numbers, held_label, held_address = numbers_of(held), held.label.clone(), held.data.data_ptr()
        del held
        addresses = []
        async for message in receive_channel:
            if isinstance(message, Batch):
                assert numbers_of(message) == message.label.int().tolist()  # each batch its own records
                addresses.append(message.data.data_ptr())
            del message  # dropped: the loader may fill this memory again
    assert held_address not in addresses
    assert view.numpy()[:, 0, 0, 0].tolist() == held_numbers[2:4] and held_label[2:4].tolist() == held_numbers[2:4]
    assert len(addresses) == 39 and len(set(addresses)) <= settings.prefetch + 4  # a few arrays, reused


async def test_cancelled_mid_epoch_its_worker_threads_end_with_it(tmp_path):
    settings = numbered(write_numbered(tmp_path / "n.rec", 400), batch_size=8, nthreads=3)
    send_channel, receive_channel = trio.open_memory_channel(0)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader, settings, record_table(settings), send_channel, 0, 5)
            for _ in range(3):
                await receive_channel.receive()
            assert threads_running_flow_code()  # the workers (the OS may not have started all three yet)
            scope.cancel()
    assert scope.cancelled_caught
    assert not threads_running_flow_code()


# --------------------------------------------------------------------------- uint8 for a GPU: mirror flags, pinned arrays


def flipped_and_normalized(batch, settings):
    """A uint8 batch as the device makes it: its flagged images flipped (flow.augment.mirror), then
    normalized to float32 NCHW as the loader's float32 output is."""
    images = batch.data.numpy().copy()
    augment.mirror(images, batch.mirror.numpy())
    out = np.empty((len(images), 3, *images.shape[1:3]), np.float32)
    augment.normalize(images, out, np.asarray(settings.mean, np.float32), 1 / np.asarray(settings.std, np.float32))
    return out


async def test_uint8_batches_leave_the_mirror_to_the_device_with_the_float32_path_s_values():
    augmentation = AugmentSettings(resize=72, rand_crop=True, rand_mirror=True, max_random_h=36, max_random_s=50,
                                   max_random_l=50, brightness=0.4, contrast=0.4, saturation=0.4, pca_noise=0.1)
    settings = LoaderSettings(path=str(MXNET_FIXTURES / "val.rec"), data_shape=(3, 64, 64), batch_size=25,
                              nthreads=2, mean=MEAN, std=STD, augment=augmentation, seed=5, layout="uint8_nhwc",
                              num_parts=4)
    raw = batches(await collect(settings, num_epochs=2))
    normalized = batches(await collect(dataclasses.replace(settings, layout="float32_nchw"), num_epochs=2))
    assert len(raw) == len(normalized) == 4
    for uint8, float32 in zip(raw, normalized):
        assert uint8.mirror.dtype == torch.bool and uint8.mirror.shape == (25,) and float32.mirror is None
        assert np.array_equal(flipped_and_normalized(uint8, settings), float32.data.numpy())
    flags = torch.cat([batch.mirror for batch in raw])
    assert 0 < flags.sum() < len(flags)  # some flipped, some not: the flags matter
    unflipped = raw[0].data.numpy()[raw[0].mirror.numpy()]
    assert not np.array_equal(unflipped, normalized[0].data.numpy())  # the loader itself did not flip them
    plain = batches(await collect(dataclasses.replace(settings, augment=AugmentSettings(resize=72))))
    synthetic = batches(await collect(dataclasses.replace(settings, benchmark=True, num_examples=50)))
    assert all(batch.mirror is None for batch in plain + synthetic)


async def test_mirror_flags_move_with_their_samples_past_bad_records(tmp_path):
    garbage = pack(IRHeader(0, 7.0, 7, 0), b"\xff\xd8 not really a jpeg")
    path = write_numbered(tmp_path / "n.rec", 40, broken={7: garbage, 20: b"short", 21: b"short"})
    settings = numbered(path, skip_bad_records=True, shuffle=True, augment=AugmentSettings(rand_mirror=True),
                        mean=MEAN, std=STD)
    raw = await collect(settings, num_epochs=2)
    normalized = batches(await collect(dataclasses.replace(settings, layout="float32_nchw"), num_epochs=2))
    assert sorted(by_epoch(raw)[0]) == sorted(set(range(40)) - {7, 20, 21})
    for uint8, float32 in zip(batches(raw), normalized):
        assert np.array_equal(flipped_and_normalized(uint8, settings), float32.data.numpy())
    assert any(batch.pad for batch in batches(raw)) and any(batch.mirror.any() for batch in batches(raw))


@pytest.mark.parametrize("layout", ["uint8_nhwc", "float32_nchw"])
async def test_pinned_batch_arrays_are_allocated_once_and_reused(tmp_path, monkeypatch, layout):
    allocations = []

    def pinned_empty(shape, dtype):  # torch without CUDA cannot pin: count the calls, allocate plainly
        allocations.append((shape, dtype))
        return np.empty(shape, dtype)

    async def copies(settings):
        """Each message, a batch as copies of its arrays: the batch itself is dropped at once."""
        send_channel, receive_channel = trio.open_memory_channel(0)
        kept = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader, settings, record_table(settings), send_channel, 0, 4)
            async for message in receive_channel:
                if isinstance(message, Batch):
                    message = (message.data.numpy().copy(), message.label.tolist(), message.ids.tolist(),
                               message.pad, None if message.mirror is None else message.mirror.tolist())
                kept.append(message)
                del message
        return kept

    monkeypatch.setattr(batch_arrays, "pinned_empty", pinned_empty)
    settings = numbered(write_numbered(tmp_path / "n.rec", 80), batch_size=8, prefetch=2, shuffle=True,
                        layout=layout, augment=AugmentSettings(rand_mirror=True))
    plain = await copies(settings)
    assert not allocations
    pinned = await copies(dataclasses.replace(settings, pin_memory=True))
    assert 1 <= len(allocations) <= settings.prefetch + 4  # the pool's keep, over 40 batches
    dtype = np.uint8 if layout == "uint8_nhwc" else np.float32
    assert all(np.dtype(allocated) == dtype for _, allocated in allocations)
    assert len(pinned) == len(plain) == 44
    for a, b in zip(pinned, plain):
        if isinstance(a, EpochEnd):
            assert a == b
        else:
            assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]


# --------------------------------------------------------------------------- flow control


def run_threads_inline(monkeypatch, slice_seconds=0.0):
    """Replaces the loader's worker threads with Trio tasks that take `slice_seconds` of (mock) time
    for a batch slice, `nthreads` at a time, then fill it in the Trio thread; returns the list of
    slices run."""
    slices = []

    class InlineWorkers:
        def __init__(self, builder, nthreads):
            self.builder, self.limiter = builder, trio.CapacityLimiter(nthreads)

        def start(self, nursery):
            self.nursery = nursery

        def submit(self, job):
            for start in self.builder.slice_starts:
                self.nursery.start_soon(self.fill, job, start)

        async def fill(self, job, start):
            async with self.limiter:
                await trio.sleep(slice_seconds)
                slices.append(start)
                if self.builder.fill(job, start, self.builder.staging()):
                    job.done.set()

        def stop(self):
            self.nursery.cancel_scope.cancel()

    monkeypatch.setattr(loader_module, "DecodeWorkers", InlineWorkers)
    return slices


async def test_a_stalled_consumer_holds_the_loader_at_prefetch_batches(tmp_path, monkeypatch, autojump_clock):
    slices = run_threads_inline(monkeypatch, slice_seconds=0.01)
    settings = numbered(write_numbered(tmp_path / "n.rec", 160), batch_size=8, prefetch=3)
    send_channel, receive_channel = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loader, settings, record_table(settings), send_channel, 0, 1)
        await receive_channel.receive()
        built = []
        for _ in range(3):  # the consumer stops reading; time passes
            await trio.sleep(100)
            built.append(len(slices) // 2)  # two slices a batch
        assert built == [1 + 3] * 3  # the one received, and `prefetch` more
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("slice_seconds, consume_seconds", [(1.0, 1.0), (0.5, 2.0), (2.0, 0.5)])
async def test_decoding_overlaps_a_slow_consumer(tmp_path, monkeypatch, autojump_clock, slice_seconds, consume_seconds):
    run_threads_inline(monkeypatch, slice_seconds)
    settings = numbered(write_numbered(tmp_path / "n.rec", 64), batch_size=8, nthreads=2, prefetch=2)
    send_channel, receive_channel = trio.open_memory_channel(0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loader, settings, record_table(settings), send_channel, 0, 1)
        async for message in receive_channel:
            if isinstance(message, EpochEnd):
                break
            await trio.sleep(consume_seconds)
    elapsed = trio.current_time() - start
    decoding, consuming = 8 * slice_seconds, 8 * consume_seconds  # 8 batches, both slices of one at once
    # The larger of the two, plus filling and draining the pipeline: well under their sum.
    assert max(decoding, consuming) <= elapsed <= max(decoding, consuming) + slice_seconds + consume_seconds


async def test_benchmark_mode_sends_fresh_synthetic_batches():
    settings = LoaderSettings(path="", data_shape=(3, 8, 8), batch_size=16, benchmark=True, num_examples=40,
                              num_classes=5)
    messages = await collect(settings, num_epochs=2)
    sent = batches(messages)
    assert len(sent) == 6
    assert [m for m in messages if isinstance(m, EpochEnd)] == [EpochEnd(0, 3, 48), EpochEnd(1, 3, 48)]
    assert len({batch.data.data_ptr() for batch in sent}) == 6
    assert all(torch.equal(batch.data, sent[0].data) for batch in sent)
    assert sent[0].data.shape == (16, 3, 8, 8) and -1 <= sent[0].data.min() and sent[0].data.max() <= 1
    assert sent[0].label.shape == (16,) and 0 <= sent[0].label.min() and sent[0].label.max() < 5
    resized = batches(await collect(dataclasses.replace(settings, epoch_batches=2)))
    assert len(resized) == 2
