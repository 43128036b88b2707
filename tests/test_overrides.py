"""One reader of `KEY=VALUE` settings for `renersans train --set` and `renersans bundle decoding --set`."""

from __future__ import annotations

import pytest

from app.decoding import Decoding
from app.errors import InputError
from app.overrides import field_types, parse_overrides
from training.config import TrainConfig

TRAIN = field_types(TrainConfig)
DECODING = field_types(Decoding)

READ = [
    (TRAIN, ["lr=3e-5", "epochs=4", "typed_markers=true", "encoder=xlm-roberta-base"], {
        "lr": 3e-5, "epochs": 4, "typed_markers": True, "encoder": "xlm-roberta-base"
    }),
    (TRAIN, ["typed_markers=0", "typed_markers=1"], {"typed_markers": True}),  # the last one wins
    (DECODING, ["bio=argmax", "none_weight=1", "join_negations=False"], {
        "bio": "argmax", "none_weight": 1.0, "join_negations": False
    }),
    (DECODING, [" o_bias = -0.5"], {"o_bias": -0.5}),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "items", "expected"), READ)
def test_values_are_read_as_their_field_s_type(fields, items: list[str], expected: dict) -> None:
    values = parse_overrides(items, fields)
    assert values == expected
    assert all(type(values[k]) is type(v) for k, v in expected.items())


REFUSED = [
    ("lr", "write it as KEY=VALUE with KEY one of"),
    ("learning_rate=1", "write it as KEY=VALUE with KEY one of"),
    ("epochs=4.5", "expected a whole number"),
    ("lr=fast", "expected a number"),
    ("typed_markers=yes", "expected true or false"),
]


@pytest.mark.parametrize(("item", "message"), REFUSED)
def test_a_bad_setting_is_named_with_what_it_takes(item: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        parse_overrides([item], TRAIN)
    assert repr(item) in str(caught.value)


def test_train_config_takes_overrides_over_its_file(tmp_path) -> None:
    path = tmp_path / "ner.toml"
    path.write_text("epochs = 8\nlr = 5e-5\n")
    config = TrainConfig.load(path, ["task=re", "epochs=2"])
    assert (config.task, config.epochs, config.lr) == ("re", 2, 5e-5)
