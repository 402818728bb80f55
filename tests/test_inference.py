"""Scoring and predicting with a checkpoint (flow.inference): the figures training printed, and the
model's own outputs, record by record."""

import weakref

import numpy as np
import pytest
import torch
import trio

from flow import checkpoints, models
from flow.actors import loader as loader_actor
from flow.actors.loader import Batch
from flow.config import config_from_dict
from flow.errors import ConfigError, ImageError
from flow.events import Validation
from flow.inference import Predictions, checkpoint_model, predict, score
from flow.recordio import IRHeader, IndexedRecordReader, RecordWriter, pack, pack_img, unpack, unpack_img
from flow.run import open_run
from tests.fixtures import MXNET_FIXTURES, repacked_rec

FIRST_ID = 2 ** 40  # repacked_rec's: past 32 bits, so ids are the headers' uint64, not positions or .idx keys


def raw_config(folder, prefix="model", data_val="val_a.rec", **train):
    return {
        "data": {"data_train": str(MXNET_FIXTURES / "resized.rec"), "data_val": str(folder / data_val),
                 "image_shape": [3, 32, 32], "num_classes": 10, "batch_size": 16, "data_nthreads": 1},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 2, "lr": 0.05, "metrics": ["accuracy", "ce"], "top_k": 3, "disp_batches": 100,
                  "seed": 1, **train},
        "checkpoint": {"model_prefix": str(folder / prefix)},
    }


async def validations(config) -> list[Validation]:
    async with open_run(config) as run:
        return [event async for event in run.events() if isinstance(event, Validation)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run validated on val_a.rec (45 records: 2 batches of 16 and one with 3 pads), and a
    1-epoch run of the same training validated on val_b.rec (37 other records): their Validation events."""
    folder = tmp_path_factory.mktemp("trained")
    repacked_rec(folder / "val_a.rec", 0, 45)
    repacked_rec(folder / "val_b.rec", 100, 37, first_id=5)

    async def both():
        return (await validations(config_from_dict(raw_config(folder))),
                await validations(config_from_dict(raw_config(folder, "other", "val_b.rec", num_epochs=1))))

    validated_a, validated_b = trio.run(both)
    return folder, validated_a, validated_b


def decoded_batch(path, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """Every record of `path` decoded and normalized as the loader does, and their header ids."""
    images, ids = [], []
    with IndexedRecordReader(path) as reader:
        for position in range(len(reader.keys)):
            header, image = unpack_img(reader.read_position(position))
            images.append(image)
            ids.append(header.id)
    data = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    data = (data - torch.tensor(mean).view(1, 3, 1, 1)) * (1 / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)
    return data, np.array(ids, dtype=np.uint64)


async def test_score_equals_the_validation_figures_of_the_epoch_that_wrote_the_checkpoint(trained):
    folder, validated_a, _ = trained
    config = config_from_dict(raw_config(folder))
    assert [name for name, _ in validated_a[0].metrics] == ["accuracy", "cross-entropy", "top_k_accuracy_3"]
    for epoch in (1, 2):
        assert await score(config, epoch) == validated_a[epoch - 1].metrics  # bit for bit: == on the floats


async def test_score_with_data_val_overridden_equals_a_run_validated_on_that_file(trained):
    folder, _, validated_b = trained
    a_params = checkpoints.load_checkpoint(str(folder / "model"), 1)[0]
    b_params = checkpoints.load_checkpoint(str(folder / "other"), 1)[0]
    assert all(torch.equal(a_params[name], b_params[name]) for name in a_params)  # validation changed no weight
    config = config_from_dict(raw_config(folder, data_val="val_b.rec"))
    assert await score(config, 1) == validated_b[0].metrics
    assert await score(config_from_dict(raw_config(folder)), 1) != validated_b[0].metrics


async def test_score_takes_checkpoint_load_epoch_by_default(trained):
    folder, validated_a, _ = trained
    raw = raw_config(folder)
    raw["checkpoint"]["load_epoch"] = 2
    assert await score(config_from_dict(raw)) == validated_a[1].metrics


async def collected(config, path, epoch=2) -> list[Predictions]:
    async with predict(config, str(path), epoch) as batches:
        return [batch async for batch in batches]


@pytest.mark.parametrize("batch_size", [5, 16])  # 45 records: 9 whole batches; 3 batches, the last with 3 pads
async def test_predict_equals_a_direct_forward_with_the_record_ids_and_pads_trimmed(trained, batch_size):
    folder, _, _ = trained
    raw = raw_config(folder)
    raw["data"].update(batch_size=batch_size, rgb_mean=[123.68, 116.779, 103.939], rgb_std=[58.393, 57.12, 57.375])
    config = config_from_dict(raw)
    batches = await collected(config, folder / "val_a.rec")
    assert [len(batch.ids) for batch in batches] == [batch_size] * (45 // batch_size) + ([45 % batch_size] if 45 % batch_size else [])
    ids = np.concatenate([batch.ids for batch in batches])
    probabilities = np.concatenate([batch.probabilities for batch in batches])
    data, expected_ids = decoded_batch(folder / "val_a.rec", raw["data"]["rgb_mean"], raw["data"]["rgb_std"])
    assert ids.dtype == np.uint64 and ids.tolist() == expected_ids.tolist() == [FIRST_ID + 7 * i for i in range(45)]
    model = checkpoint_model(config, 2)
    assert not model.training
    with torch.no_grad():
        expected = torch.softmax(model(data), dim=1).numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (45, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


async def test_predict_over_two_devices_equals_one(trained):
    folder, _, _ = trained
    one = await collected(config_from_dict(raw_config(folder)), folder / "val_a.rec")
    two = await collected(config_from_dict(raw_config(folder, devices=["cpu", "cpu"])), folder / "val_a.rec")
    assert [batch.ids.tolist() for batch in one] == [batch.ids.tolist() for batch in two]
    for first, second in zip(one, two):
        np.testing.assert_allclose(first.probabilities, second.probabilities, rtol=1e-5, atol=1e-7)


async def test_predict_reads_labels_that_are_no_class_id(trained, tmp_path):
    folder, _, _ = trained
    path = tmp_path / "unlabelled.rec"
    with IndexedRecordReader(folder / "val_a.rec") as reader, RecordWriter(path, index=True) as writer:
        for position in range(3):
            header, image = unpack(reader.read_position(position))
            writer.write(pack(header._replace(label=-1.0), image), key=position)
    batches = await collected(config_from_dict(raw_config(folder)), path)
    assert batches[0].ids.tolist() == [FIRST_ID, FIRST_ID + 7, FIRST_ID + 14]


async def test_predict_holds_only_the_batches_in_flight(trained, tmp_path, monkeypatch):
    folder, _, _ = trained
    path = repacked_rec(tmp_path / "many.rec", 0, 400)
    raw = raw_config(folder)
    raw["data"]["batch_size"] = 4
    alive = []  # one entry a batch the loader made that something still holds

    class CountedBatch(Batch):
        def __init__(self, *fields):
            super().__init__(*fields)
            alive.append(None)
            weakref.finalize(self, alive.pop)

    monkeypatch.setattr(loader_actor, "Batch", CountedBatch)
    most = rows = 0
    async with predict(config_from_dict(raw), str(path), 2) as batches:
        async for batch in batches:
            rows += len(batch.ids)
            most = max(most, len(alive))
    assert rows == 400
    assert 1 <= most <= 8  # the loader's prefetch, the devices' queues and the batch in hand, of 100


async def test_leaving_predict_early_stops_the_actors(trained, tmp_path):
    folder, _, _ = trained
    path = repacked_rec(tmp_path / "many.rec", 0, 200)
    with trio.fail_after(30):
        async with predict(config_from_dict(raw_config(folder)), str(path), 2) as batches:
            async for batch in batches:
                break
    assert len(batch.ids) == 16


async def test_a_missing_checkpoint_is_an_error_naming_its_file(trained):
    folder, _, _ = trained
    with pytest.raises(Exception, match=r"model-0003\.params: no such checkpoint file"):
        await score(config_from_dict(raw_config(folder)), 3)
    with pytest.raises(ConfigError, match="checkpoint.load_epoch"):
        await score(config_from_dict(raw_config(folder)))  # load_epoch 0: which checkpoint?


async def test_a_model_for_another_image_shape_is_refused_before_any_record_is_read(trained):
    folder, _, _ = trained
    raw = raw_config(folder)
    raw["data"]["image_shape"] = [3, 28, 28]
    with pytest.raises(ConfigError, match=r"data.image_shape: the model of .*model-model.json takes \[3, 32, 32\]"):
        await score(config_from_dict(raw), 1)


async def test_records_smaller_than_the_models_images_are_an_error_naming_the_record(trained, tmp_path):
    folder, _, _ = trained
    path = tmp_path / "small.rec"
    with RecordWriter(path, index=True) as writer:
        writer.write(pack_img(IRHeader(0, 1.0, 9, 0), np.zeros((20, 20, 3), dtype=np.uint8)), key=0)
    with pytest.raises(ImageError, match=r"small.rec: at byte 0: record 0 .*smaller than the output 32x32"):
        await collected(config_from_dict(raw_config(folder)), path)


async def test_a_callers_model_takes_the_checkpoints_weights(trained):
    folder, validated_a, _ = trained
    spec = checkpoints.load_model_spec(str(folder / "model"))
    own = models.build_from_spec(spec)
    assert await score(config_from_dict(raw_config(folder)), 2, model=own) == validated_a[1].metrics
    assert not own.training

