"""The arrays clients send to ``autoquant serve``: read without pickle, checked against the model input."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from autoquant.serve import InputSpec, PayloadError, decode_batch, encode_arrays

IMAGE = InputSpec("image", np.dtype(np.float32), (None, 1, 8, 8))
TOKENS = InputSpec("tokens", np.dtype(np.int64), (None, 16))


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def refusal(body: bytes, inputs: list[InputSpec]) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        decode_batch(body, inputs)
    return caught.value


def test_an_npy_or_npz_batch_arrives_as_it_was_sent() -> None:
    images = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    tokens = np.arange(32, dtype=np.int64).reshape(2, 16)
    assert np.array_equal(decode_batch(npy(images), [IMAGE])["image"], images)
    both = decode_batch(npz(image=images, tokens=tokens[:1].repeat(3, 0)), [IMAGE, TOKENS])
    assert np.array_equal(both["image"], images) and both["tokens"].shape == (3, 16)
    fortran = np.asfortranarray(images)
    assert np.array_equal(decode_batch(npy(fortran), [IMAGE])["image"], images)
    big_endian = images.astype(">f4")
    decoded = decode_batch(npy(big_endian), [IMAGE])["image"]
    assert decoded.dtype == np.float32 and decoded.dtype.isnative and np.array_equal(decoded, images)


def test_bad_arrays_are_refused_with_a_clear_status_and_message() -> None:
    good = np.zeros((2, 1, 8, 8), np.float32)
    cases = {
        "wrong dtype": (npy(good.astype(np.float64)), 422, "dtype float64, the model takes float32"),
        "wrong shape": (
            npy(np.zeros((2, 1, 4, 4), np.float32)),
            422,
            "shape (2, 1, 4, 4), the model takes (?, 1, 8, 8)",
        ),
        "wrong rank": (npy(np.zeros((64,), np.float32)), 422, "the model takes (?, 1, 8, 8)"),
        "NaN": (npy(np.full((1, 1, 8, 8), np.nan, np.float32)), 422, "holds NaN or infinity"),
        "infinity": (npy(np.full((1, 1, 8, 8), np.inf, np.float32)), 422, "holds NaN or infinity"),
        "not a file": (b"hello", 400, "neither an .npy file nor an .npz archive"),
        "bad header": (b"\x93NUMPY\x01\x00\x10\x00{'descr': <garbage}\n", 400, "not a readable .npy file"),
        "truncated data": (npy(good)[:-7], 400, "shape (2, 1, 8, 8) of float32 needs 512"),
        "unknown input": (npz(image=good, extra=good), 422, "unknown input(s) ['extra']"),
        "missing input": (npz(tokens=np.zeros((2, 16), np.int64)), 422, "missing input(s) ['image']"),
    }
    for name, (body, status, message) in cases.items():
        error = refusal(body, [IMAGE])
        assert (error.status, message in str(error)) == (status, True), (name, str(error))
    two = refusal(npy(good), [IMAGE, TOKENS])
    assert two.status == 422 and "send an .npz" in str(two)


def test_a_pickled_object_array_is_refused_without_being_unpickled(tmp_path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (marker.mkdir, ())

    payload = npy(np.array([Trap()], dtype=object), allow_pickle=True)
    assert b"mkdir" in payload  # a real pickle, which would create the folder if loaded
    error = refusal(payload, [IMAGE])
    assert error.status == 422 and "object arrays are refused" in str(error)
    assert not marker.exists()
    inside_npz = io.BytesIO()
    with zipfile.ZipFile(inside_npz, "w") as archive:
        archive.writestr("image.npy", payload)
    assert refusal(inside_npz.getvalue(), [IMAGE]).status == 422 and not marker.exists()


def test_a_header_that_claims_a_huge_array_allocates_nothing() -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 8, 8), np.float32))
    header["shape"] = (10**12, 1, 8, 8)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    error = refusal(buffer.getvalue() + b"\0" * 256, [IMAGE])
    assert error.status == 400 and "the .npy data is 256 bytes" in str(error)


def test_a_compressed_archive_that_unpacks_to_far_more_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", npy(np.zeros((20000, 1, 8, 8), np.float32)))
    error = refusal(buffer.getvalue(), [IMAGE])
    assert error.status == 400 and "unpacks to far more" in str(error)


def test_outputs_travel_as_an_npz_in_the_model_output_order() -> None:
    outputs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64)]
    with np.load(io.BytesIO(encode_arrays(outputs)), allow_pickle=False) as archive:
        assert archive.files == ["0", "1"]
        assert all(np.array_equal(archive[str(i)], o) for i, o in enumerate(outputs))
