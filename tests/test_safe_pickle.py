"""Untrusted sample pickles (issue 12 item 2): hand-built opcode streams that call, allocate or hash too much are
refused before they run, with one short line that never embeds the payload; real DragBench files still load."""

import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from dragsdk.errors import SpecError, UnsafePickleError
from dragsdk.safe_pickle import restricted_load
from dragsdk.samples import load_sample

from .conftest import dragbench_samples

PROTO = b"\x80\x02"
STOP = b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _binint(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple_dag(levels: int, fanout: int = 10) -> bytes:
    """Tuples of tuples sharing references: level k has fanout**k leaves as a tree, from about 12·k opcodes."""
    out = b"(" + b"K\x01" * fanout + b"t" + b"q\x00"  # MARK, BININT1 1 × fanout, TUPLE, BINPUT 0
    for k in range(1, levels):
        out += b"(" + (b"h" + bytes([k - 1])) * fanout + b"t" + b"q" + bytes([k])  # BINGET k-1 × fanout
    return out


BOMBS = {
    # bytes(2*10**8): a 20-byte program allocating 200 MB (issue: 200 s, 15 GB, an 800 MB message).
    "bytes_of_a_huge_int": PROTO + _global("builtins", "bytes") + _binint(2 * 10**8) + b"\x85R" + STOP,
    # list(range(10**9)): range is no allowed global, and list() of a number is no allowed call either.
    "list_of_range": PROTO
    + _global("builtins", "list")
    + _global("builtins", "range")
    + _binint(10**9)
    + b"\x85R\x85R"
    + STOP,
    "list_of_an_int": PROTO + _global("builtins", "list") + _binint(10**9) + b"\x85R" + STOP,
    "str_of_a_long_string": PROTO
    + _global("builtins", "int")
    + b"X"
    + struct.pack("<I", 5000)
    + b"9" * 5000
    + b"\x85R"
    + STOP,
    # A memo index of 2**31 - 1 makes the C unpickler allocate a memo table of 16 GB.
    "memo_index_bomb": PROTO + b"N" + b"r\xff\xff\xff\x7f" + STOP,
    # A dict keyed by a tuple DAG: hashing the key visits 10**5 nodes although the file holds 60 opcodes.
    "hashed_tuple_dag": PROTO + _tuple_dag(5) + b"}" + b"h\x04" + b"N" + b"s" + STOP,
    # A list DAG: 10**9 elements as a tree (np.asarray of it would expand them all).
    "list_dag": PROTO + _tuple_dag(9).replace(b"t", b"l") + STOP,
    # numpy's _reconstruct asked for a 10 GB array instead of the empty one numpy writes.
    "reconstruct_huge": PROTO
    + _global("numpy.core.multiarray", "_reconstruct")
    + _global("numpy", "ndarray")
    + b"("
    + b"\x8a\x05\x00\xe4\x0bT\x02"
    + b"t"
    + b"U\x01b"
    + b"\x87R"
    + STOP,
    # _codecs.encode chained with the hex codec doubles the data per call.
    "codecs_hex": PROTO + _global("_codecs", "encode") + b"U\x04abcd" + b"U\x03hex" + b"\x86R" + STOP,
    "os_system": PROTO + _global("os", "system") + b"U\x04true" + b"\x85R" + STOP,
    "newobj": PROTO + _global("builtins", "list") + b")" + b"\x81" + STOP,
    "persistent_id": PROTO + b"U\x01xQ" + STOP,
}


def _array_with_state(shape: tuple[int, ...], data: bytes) -> bytes:
    """A pickle of an array whose BUILD state claims ``shape`` but carries ``data`` (a lie about its size)."""
    good = pickle.dumps(np.zeros(4, np.uint8), protocol=2)
    return good.replace(b"K\x04\x85", b"J" + struct.pack("<i", shape[0]) + b"\x85").replace(b"\x00" * 4, data)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_hand_built_bomb_pickles_are_refused_with_one_short_line(tmp_path, name):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(BOMBS[name])
    with pytest.raises(UnsafePickleError) as info:
        restricted_load(path)
    msg = str(info.value)
    assert msg.startswith("meta_data.pkl: ") and "\n" not in msg and len(msg) < 300
    assert "9999" not in msg and "abcd" not in msg  # the payload never appears


def test_an_array_whose_state_lies_about_its_size_is_refused(tmp_path):
    assert restricted_load(
        _write(tmp_path, pickle.dumps(np.arange(4, dtype=np.uint8), protocol=2))
    ).tolist() == [0, 1, 2, 3]
    with pytest.raises(UnsafePickleError, match="bytes its shape and dtype need"):
        restricted_load(_write(tmp_path, _array_with_state((1000,), b"\x00" * 4)))


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(UnsafePickleError, match="not a plain numeric type"):
        restricted_load(_write(tmp_path, pickle.dumps(np.array([1, "a"], dtype=object))))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_containers_numbers_and_numeric_arrays_round_trip_at_every_protocol(tmp_path, protocol):
    value = {
        "prompt": "a dog",
        "points": [[1, 2], [3.5, 4]],
        "mask": np.eye(3, dtype=np.uint8),
        "f32": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "set": {1, 2},
        "frozen": frozenset("ab"),
        "bytes": b"\x00\xff",
        "tuple": (1, (2, 3)),
        "none": None,
        "flag": True,
        "scalar": np.float64(2.5),
    }
    out = restricted_load(_write(tmp_path, pickle.dumps(value, protocol=protocol)))
    assert out.keys() == value.keys()
    for k, v in value.items():
        if isinstance(v, np.ndarray):
            assert type(out[k]) is np.ndarray and out[k].dtype == v.dtype and (out[k] == v).all()
        else:
            assert out[k] == v and type(out[k]) is type(v)


def test_sample_files_over_the_size_cap_are_refused_before_reading(tmp_path, monkeypatch):
    path = _write(tmp_path, pickle.dumps({"points": list(range(2000))}))
    monkeypatch.setenv("DRAGSDK_MAX_SAMPLE_MB", "0.001")
    with pytest.raises(
        SpecError, match=r"meta_data.pkl: .* MiB limit \(raise it with DRAGSDK_MAX_SAMPLE_MB\)"
    ):
        restricted_load(path)
    (tmp_path / "points.json").write_text('{"points": [' + ", ".join(["[1, 2]"] * 400) + "]}")
    Image.new("RGB", (8, 8)).save(tmp_path / "original.jpg")
    (tmp_path / "meta_data.pkl").unlink()
    with pytest.raises(SpecError, match="points.json: .* MiB limit"):
        load_sample(tmp_path)


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"\x80\x04\x95", "not a readable pickle"),  # truncated
        (pickle.dumps([1, 2, 3]), "expected a dict"),  # not a dict
        (pickle.dumps({"points": ["a", "b"]}), "meta_data.pkl:points"),
        (pickle.dumps({"points": [[1, 2], [3, 4]], "mask": ["x"]}), "meta_data.pkl:mask"),
    ],
)
def test_malformed_sample_pickles_are_spec_errors_naming_the_file(tmp_path, payload, match):
    Image.new("RGB", (8, 8)).save(tmp_path / "original_image.png")
    _write(tmp_path, payload)
    with pytest.raises(SpecError, match=match):
        load_sample(tmp_path)


@pytest.mark.parametrize("folder", dragbench_samples(), ids=lambda p: p.name)
def test_real_dragbench_pickles_load_exactly_as_plain_pickle_reads_them(folder):
    with open(folder / "meta_data.pkl", "rb") as f:
        trusted = pickle.load(f)  # test data shipped with the project, compared against
    ours = restricted_load(folder / "meta_data.pkl")
    assert ours["prompt"] == trusted["prompt"] and ours["points"] == trusted["points"]
    assert type(ours["mask"]) is np.ndarray and (ours["mask"] == trusted["mask"]).all()


def _write(folder, data: bytes):
    path = folder / "meta_data.pkl"
    path.write_bytes(data)
    return path
