"""Loading a trained model: a missing file and a file that is not a Keras model are different errors."""
import zipfile

import keras
import pytest

from data.errors import UserError
from pipeline import trained


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    inputs = keras.Input((8, 8, 3), name="image")
    keras.Model(inputs, {"depth": keras.layers.Conv2D(1, 1, name="depth")(inputs)}).save(path)
    return path


def test_missing_model_is_not_found(tmp_path):
    with pytest.raises(UserError, match="no trained model at .*make train"):
        trained.load(tmp_path / "model.keras")


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "bit_flip", "foreign_zip", "folder"])
def test_a_file_that_is_not_a_keras_model_says_so(small_model, tmp_path, damage):
    bad = tmp_path / "model.keras"
    data = small_model.read_bytes()
    if damage == "garbage":
        bad.write_bytes(b"this is not a model\n" * 10)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "bit_flip":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    elif damage == "foreign_zip":
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("notes.txt", "hello")
    else:
        bad.mkdir()
    with pytest.raises(UserError, match="not a Keras model") as raised:
        trained.load(bad)
    assert "not found" not in str(raised.value) and "\n" not in str(raised.value)


def test_a_good_model_loads(small_model):
    assert trained.tasks(trained.load(small_model)) == ["depth"]
