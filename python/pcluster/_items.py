"""How items cross between Python and the cluster.

With Python tasks in the chain, items are tagged bytes, so that a value keeps its type from
Python code to Python code: the first byte says what follows.

====  =========================================================================
tag   payload
====  =========================================================================
``s`` a ``str``, UTF-8
``b`` ``bytes``
``j`` another object, as JSON (the default codec)
``p`` another object, pickled (``codec="pickle"``; see the README's security note)
``r`` raw bytes from outside Python (``pcluster run``'s lines): ``str`` when valid
      UTF-8, else ``bytes``
====  =========================================================================

A chain of Rust tasks only (no Python task) sees plain bytes: a fed ``str`` goes as its
UTF-8, ``bytes`` as they are, and the handlers get ``bytes``.
"""

import json
import pickle
from typing import Any, Callable

CODECS = ("json", "pickle")


def check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")


def encode_tagged(item: Any, codec: str = "json") -> bytes:
    """One item as tagged bytes."""
    if isinstance(item, str):
        return b"s" + item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return b"b" + bytes(item)
    if codec == "pickle":
        return b"p" + pickle.dumps(item)
    try:
        return b"j" + json.dumps(item).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"item {item!r} cannot be sent with the json codec ({e}); "
            "send str, bytes or JSON values, or set up the chain with codec=\"pickle\""
        ) from None


def decode_tagged(data: bytes, codec: str = "json") -> Any:
    """A tagged item back to its value; pickle is only read when the chain's codec is pickle."""
    tag, payload = data[:1], data[1:]
    if tag == b"s":
        return payload.decode("utf-8")
    if tag == b"b":
        return payload
    if tag == b"j":
        return json.loads(payload)
    if tag == b"p":
        if codec != "pickle":
            raise ValueError("refusing a pickled item: the chain's codec is not pickle")
        return pickle.loads(payload)
    if tag == b"r":
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload
    raise ValueError(f"item without a known type tag (first byte {tag!r})")


def encode_raw(item: Any) -> bytes:
    """One item for a chain of Rust tasks: str as UTF-8, bytes as they are."""
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TypeError(
        f"item {item!r} is neither str nor bytes: a chain without Python tasks takes only "
        "those (encode other values yourself, e.g. with json.dumps)"
    )


def encoder(tagged: bool, codec: str) -> Callable[[Any], bytes]:
    if not tagged:
        return encode_raw
    if codec == "json":
        return encode_tagged
    return lambda item: encode_tagged(item, codec)


def decoder(tagged: bool, codec: str) -> Callable[[bytes], Any]:
    if not tagged:
        return lambda data: data
    return lambda data: decode_tagged(data, codec)
