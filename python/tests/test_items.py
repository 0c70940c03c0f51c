"""The item contract between Python code (with pyhost's tasks): tags, codecs, raw items."""

import pickle

import pytest

from pcluster import _items


@pytest.mark.parametrize(
    "value, tagged",
    [
        ("héllo", b"s" + "héllo".encode()),
        ("", b"s"),
        (b"\xff\x00", b"b\xff\x00"),
        ({"a": [1, 2.5, None]}, b'j{"a": [1, 2.5, null]}'),
        (7, b"j7"),
    ],
)
def test_values_keep_their_type_through_tags(value, tagged) -> None:
    assert _items.encode_tagged(value) == tagged
    assert _items.decode_tagged(tagged) == value
    assert type(_items.decode_tagged(tagged)) is type(value)


def test_pickle_only_with_the_pickle_codec() -> None:
    value = {1, 2, 3}
    data = _items.encode_tagged(value, "pickle")
    assert data[:1] == b"p" and pickle.loads(data[1:]) == value
    assert _items.decode_tagged(data, "pickle") == value
    with pytest.raises(ValueError, match="refusing a pickled item"):
        _items.decode_tagged(data, "json")
    with pytest.raises(TypeError, match='codec="pickle"'):
        _items.encode_tagged(value, "json")


def test_raw_items_are_text_when_they_can_be() -> None:
    assert _items.decode_tagged(b"rline") == "line"
    assert _items.decode_tagged(b"r\xff") == b"\xff"
    with pytest.raises(ValueError, match="type tag"):
        _items.decode_tagged(b"zzz")


def test_without_python_tasks_items_are_plain_bytes() -> None:
    assert _items.encode_raw("é") == "é".encode()
    assert _items.encode_raw(bytearray(b"x")) == b"x"
    with pytest.raises(TypeError, match="neither str nor bytes"):
        _items.encode_raw(3)
    assert _items.decoder(False, "json")(b"sx") == b"sx"
    assert _items.decoder(True, "json")(b"sx") == "x"
    with pytest.raises(ValueError, match="unknown codec"):
        _items.check_codec("yaml")
