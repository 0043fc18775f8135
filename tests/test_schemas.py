"""The five schemas against every rule of the data model (xpcs-data.md section 1).

Each rule is checked for the exception class (``SchemaError`` is a ``ValueError``,
``SchemaTypeError`` a ``TypeError``), its ``field`` attribute and the field named in the
message. No HDF5 is needed except for the last tests, which show that a stored value of the
wrong type surfaces through the facade as ``HDF5ValidationError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpcs_io.errors import HDF5ValidationError, SchemaError, SchemaTypeError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import (
    DEFAULT_SCHEMA_VERSION,
    G2Data,
    GeometryMetadata,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Schema,
)
from xpcs_io.tools.demo import DemoSpec, write_native_file

Array = npt.NDArray[Any]
SHAPE = (6, 5)


# ---------------------------------------------------------------- builders


def geometry_fields(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "bcx": 2.5,
        "bcy": 3.0,
        "det_dist": 5000.0,
        "lambda_": 1.54,
        "pix_dim": 0.075,
        "shape": SHAPE,
    }
    fields.update(over)
    return fields


def geometry(**over: Any) -> GeometryMetadata:
    return GeometryMetadata(**geometry_fields(**over))


def qmap_fields(**over: Any) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    fields: dict[str, Any] = {
        "sqmap": rng.random(SHAPE).astype(np.float32),
        "dqmap": rng.random(SHAPE).astype(np.float32),
        "phis": rng.uniform(-np.pi, np.pi, SHAPE),
        "mask": (rng.random(SHAPE) > 0.2).astype(np.uint8),
        "partition_map": rng.integers(0, 4, SHAPE).astype(np.uint16),
    }
    fields.update(over)
    return fields


def g2_fields(n_delay: int = 4, n_q: int = 3, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "g2": np.full((n_delay, n_q), 1.1, dtype=np.float32),
        "g2_err": np.full((n_delay, n_q), 0.01, dtype=np.float32),
        "delay_times": np.arange(n_delay, dtype=np.float64) * 1e-5,
        "q_values": np.linspace(0.01, 0.03, n_q),
    }
    fields.update(over)
    return fields


def mask_fields(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "mask": np.ones(SHAPE, dtype=np.int32),
        "metadata": geometry(),
        "description": "clean",
    }
    fields.update(over)
    return fields


def partition_fields(dtype: npt.DTypeLike = np.uint16, **over: Any) -> dict[str, Any]:
    n = 4
    labels = (np.arange(SHAPE[0] * SHAPE[1]) % (n + 1)).reshape(SHAPE).astype(dtype)
    fields: dict[str, Any] = {
        "partition_map": labels,
        "num_pts": n,
        "val_list": np.linspace(0.01, 0.04, n),
        "num_list": np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)[1:],
        "metadata": geometry(),
        "mask": (labels > 0).astype(np.uint8),
        "method": "linear",
    }
    fields.update(over)
    return fields


BUILDERS: dict[type[Schema], Callable[..., dict[str, Any]]] = {
    QMapSchema: qmap_fields,
    G2Data: g2_fields,
    GeometryMetadata: geometry_fields,
    MaskSchema: mask_fields,
    PartitionSchema: partition_fields,
}


def rejected(
    kind: type[SchemaError | SchemaTypeError], field: str, build: Callable[[], object]
) -> SchemaError | SchemaTypeError:
    """Assert ``build()`` raises ``kind`` naming ``field`` (attribute and message)."""
    with pytest.raises(kind) as info:
        build()
    exc = info.value
    assert isinstance(exc, SchemaError | SchemaTypeError)
    assert exc.field == field
    assert field in str(exc)
    return exc


# ---------------------------------------------------------------- the exception classes


def test_exception_classes_are_standard_ones() -> None:
    assert issubclass(SchemaError, ValueError)
    assert issubclass(SchemaTypeError, TypeError)
    assert SchemaError("x", field="f").field == "f"
    assert SchemaTypeError("x").field is None


# ---------------------------------------------------------------- QMapSchema


def test_qmap_valid_and_defaults() -> None:
    q = QMapSchema(sqmap=np.zeros(SHAPE), dqmap=np.zeros(SHAPE), phis=np.zeros(SHAPE))
    assert (q.sqmap_unit, q.dqmap_unit, q.phis_unit) == ("nm^-1", "nm^-1", "rad")
    assert q.mask is None
    assert q.partition_map is None
    full = QMapSchema(**qmap_fields(sqmap_unit="A^-1", dqmap_unit="A^-1", phis_unit="deg"))
    assert full.sqmap.dtype == np.float32
    assert full.partition_map is not None
    assert full.partition_map.dtype == np.uint16


def test_qmap_lists_and_tuples_become_arrays() -> None:
    fields: dict[str, Any] = {
        "sqmap": [[0.1, 0.2], [0.3, 0.4]],
        "dqmap": ((0.1, 0.2), (0.3, 0.4)),
        "phis": [[0.0, 1.0], [2.0, 3.0]],
        "mask": [[1, 0], [0, 1]],
        "partition_map": [[1, 2], [0, 1]],
    }
    q = QMapSchema(**fields)
    for name in ("sqmap", "dqmap", "phis", "mask", "partition_map"):
        assert isinstance(getattr(q, name), np.ndarray), name
    assert q.sqmap.shape == (2, 2)
    assert q.dqmap.dtype == np.float64
    np.testing.assert_array_equal(q.dqmap, [[0.1, 0.2], [0.3, 0.4]])


@pytest.mark.parametrize("name", ["sqmap", "dqmap", "phis"])
@pytest.mark.parametrize("shape", [(30,), (2, 3, 5), ()])
def test_qmap_maps_must_be_2d(name: str, shape: tuple[int, ...]) -> None:
    rejected(SchemaError, name, lambda: QMapSchema(**qmap_fields(**{name: np.zeros(shape)})))


@pytest.mark.parametrize("name", ["dqmap", "phis", "mask", "partition_map"])
def test_qmap_shapes_must_equal_sqmap(name: str) -> None:
    wrong = np.zeros((SHAPE[0], SHAPE[1] + 1), dtype=np.uint8)
    exc = rejected(SchemaError, name, lambda: QMapSchema(**qmap_fields(**{name: wrong})))
    assert "shape" in str(exc)


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("sqmap_unit", "A^-1", "furlong^-1"),
        ("dqmap_unit", "A^-1", "nm"),
        ("phis_unit", "deg", "grad"),
    ],
)
def test_qmap_units_must_be_in_their_sets(name: str, good: str, bad: str) -> None:
    assert getattr(QMapSchema(**qmap_fields(**{name: good})), name) == good
    rejected(SchemaError, name, lambda: QMapSchema(**qmap_fields(**{name: bad})))
    rejected(SchemaTypeError, name, lambda: QMapSchema(**qmap_fields(**{name: 1})))


@pytest.mark.parametrize("name", ["sqmap", "dqmap", "phis"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_qmap_maps_reject_nan_and_inf(name: str, value: float) -> None:
    arr = qmap_fields()[name].copy()
    arr[2, 3] = value
    exc = rejected(SchemaError, name, lambda: QMapSchema(**qmap_fields(**{name: arr})))
    assert "non-finite" in str(exc)


@pytest.mark.parametrize("value", [2, -1, 255])
def test_qmap_mask_only_zero_or_one(value: int) -> None:
    mask = np.ones(SHAPE, dtype=np.int16)
    mask[1, 1] = value
    rejected(SchemaError, "mask", lambda: QMapSchema(**qmap_fields(mask=mask)))


def test_qmap_mask_accepts_bool_and_rejects_float() -> None:
    q = QMapSchema(**qmap_fields(mask=np.ones(SHAPE, dtype=bool)))
    assert q.mask is not None
    assert q.mask.dtype == np.bool_
    rejected(SchemaTypeError, "mask", lambda: QMapSchema(**qmap_fields(mask=np.ones(SHAPE))))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int32, np.int64]
)
def test_qmap_partition_map_any_integer_width(dtype: npt.DTypeLike) -> None:
    labels = np.arange(30).reshape(SHAPE).astype(dtype)
    q = QMapSchema(**qmap_fields(partition_map=labels))
    assert q.partition_map is not None
    assert q.partition_map.dtype == np.dtype(dtype)


def test_qmap_partition_map_must_be_integer() -> None:
    rejected(
        SchemaTypeError,
        "partition_map",
        lambda: QMapSchema(**qmap_fields(partition_map=np.zeros(SHAPE))),
    )


@pytest.mark.parametrize("value", [None, "not an array", b"bytes", {"a": 1}])
def test_qmap_non_array_values_are_type_errors(value: object) -> None:
    rejected(SchemaTypeError, "sqmap", lambda: QMapSchema(**qmap_fields(sqmap=value)))


@pytest.mark.parametrize(
    "value", [np.array([["a", "b"]]), np.zeros((2, 2), dtype=complex), [[1, "x"], [2, 3]]]
)
def test_qmap_non_real_dtypes_are_type_errors(value: object) -> None:
    rejected(SchemaTypeError, "phis", lambda: QMapSchema(**qmap_fields(phis=value)))


def test_qmap_ragged_list_is_type_error() -> None:
    rejected(SchemaTypeError, "sqmap", lambda: QMapSchema(**qmap_fields(sqmap=[[1.0, 2.0], [3.0]])))


# ---------------------------------------------------------------- G2Data


def test_g2_valid_shape_is_delay_by_q() -> None:
    g2 = G2Data(**g2_fields(n_delay=7, n_q=2))
    assert g2.g2.shape == (7, 2)
    assert g2.delay_times.shape == (7,)
    assert g2.q_values.shape == (2,)


def test_g2_lists_become_arrays() -> None:
    fields: dict[str, Any] = {
        "g2": [[1.2, 1.1], [1.1, 1.05]],
        "g2_err": ((0.01, 0.01), (0.02, 0.02)),
        "delay_times": [0, 1e-5],
        "q_values": (0.01, 0.02),
    }
    g2 = G2Data(**fields)
    assert isinstance(g2.g2_err, np.ndarray)
    assert g2.g2.dtype == np.float64
    assert g2.delay_times.tolist() == [0.0, 1e-5]


@pytest.mark.parametrize("name", ["g2", "g2_err"])
def test_g2_arrays_must_be_2d_float(name: str) -> None:
    one_d: dict[str, Any] = {name: np.ones(4)}
    ints: dict[str, Any] = {name: np.ones((4, 3), np.int64)}
    rejected(SchemaError, name, lambda: G2Data(**g2_fields(**one_d)))
    rejected(SchemaTypeError, name, lambda: G2Data(**g2_fields(**ints)))


def test_g2_err_shape_must_equal_g2() -> None:
    rejected(SchemaError, "g2_err", lambda: G2Data(**g2_fields(g2_err=np.zeros((3, 4)))))


def test_g2_axis_lengths_must_match() -> None:
    exc = rejected(
        SchemaError, "delay_times", lambda: G2Data(**g2_fields(delay_times=np.arange(5.0)))
    )
    assert "n_delay" in str(exc)
    exc = rejected(SchemaError, "q_values", lambda: G2Data(**g2_fields(q_values=np.ones(4))))
    assert "n_q" in str(exc)
    rejected(SchemaError, "delay_times", lambda: G2Data(**g2_fields(delay_times=np.ones((4, 1)))))
    rejected(SchemaError, "q_values", lambda: G2Data(**g2_fields(q_values=np.ones((3, 1)))))


@pytest.mark.parametrize(
    "delays",
    [
        [0.0, 1.0, np.nan, 3.0],
        [0.0, 1.0, 2.0, np.inf],
        [-1.0, 1.0, 2.0, 3.0],
        [0.0, 1.0, 1.0, 3.0],
        [0.0, 2.0, 1.0, 3.0],
        [3.0, 2.0, 1.0, 0.0],
    ],
)
def test_g2_delays_finite_non_negative_strictly_increasing(delays: list[float]) -> None:
    rejected(SchemaError, "delay_times", lambda: G2Data(**g2_fields(delay_times=delays)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64, np.int64])
def test_g2_integer_delays_are_checked_for_order(dtype: npt.DTypeLike) -> None:
    # np.diff wraps around on unsigned integers: [1, 3, 2, 5] must still be refused.
    ok = G2Data(**g2_fields(delay_times=np.array([0, 1, 3, 5], dtype=dtype)))
    assert ok.delay_times.dtype == np.dtype(dtype)
    rejected(
        SchemaError,
        "delay_times",
        lambda: G2Data(**g2_fields(delay_times=np.array([1, 3, 2, 5], dtype=dtype))),
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_g2_values_and_q_reject_nan_and_inf(value: float) -> None:
    g2 = g2_fields()["g2"].copy()
    g2[1, 1] = value
    rejected(SchemaError, "g2", lambda: G2Data(**g2_fields(g2=g2)))
    rejected(SchemaError, "q_values", lambda: G2Data(**g2_fields(q_values=[0.01, value, 0.03])))


def test_g2_err_allows_nan_but_not_inf_or_negative() -> None:
    err = g2_fields()["g2_err"].copy()
    err[0, 0] = np.nan
    got = G2Data(**g2_fields(g2_err=err))
    assert np.isnan(got.g2_err[0, 0])
    all_nan = G2Data(**g2_fields(g2_err=np.full((4, 3), np.nan)))
    assert np.isnan(all_nan.g2_err).all()
    for bad in (np.inf, -np.inf, -0.5):
        arr = err.copy()
        arr[2, 1] = bad
        fields = g2_fields(g2_err=arr)
        rejected(SchemaError, "g2_err", lambda: G2Data(**fields))  # noqa: B023


def test_g2_zero_delay_and_single_delay_are_valid() -> None:
    assert G2Data(**g2_fields(n_delay=1, delay_times=[0.0])).delay_times[0] == 0.0
    assert G2Data(**g2_fields(n_delay=0)).g2.shape == (0, 3)


# ---------------------------------------------------------------- GeometryMetadata


def test_geometry_valid_defaults_and_coercion() -> None:
    fields: dict[str, Any] = {
        "bcx": 256,
        "bcy": np.float32(250.5),
        "det_dist": np.array(5000),
        "lambda_": 1.54,
        "pix_dim": 0.075,
        "shape": [512, np.int64(1024)],
    }
    g = GeometryMetadata(**fields)
    assert g.det_rotation is None
    assert g.incident_angle is None
    assert isinstance(g.bcx, float)
    assert g.bcx == 256.0
    assert isinstance(g.det_dist, float)
    assert g.bcy == 250.5
    assert g.shape == (512, 1024)
    assert all(type(v) is int for v in g.shape)
    g2 = geometry(shape=np.array([4, 3]), det_rotation=1.5, incident_angle=-0.2)
    assert g2.shape == (4, 3)
    assert (g2.det_rotation, g2.incident_angle) == (1.5, -0.2)


def test_geometry_beam_centre_may_lie_off_the_detector() -> None:
    assert geometry(bcx=-10.0, bcy=1e4).bcx == -10.0


@pytest.mark.parametrize("name", ["det_dist", "lambda_", "pix_dim"])
@pytest.mark.parametrize("value", [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf])
def test_geometry_distances_finite_and_positive(name: str, value: float) -> None:
    rejected(SchemaError, name, lambda: geometry(**{name: value}))


@pytest.mark.parametrize("name", ["bcx", "bcy", "det_rotation", "incident_angle"])
@pytest.mark.parametrize(
    "value",
    [
        np.nan,
        np.inf,
        -np.inf,
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param(-(10**400), id="negative-int-beyond-float"),
    ],
)
def test_geometry_nan_and_inf_rejected_everywhere(name: str, value: float) -> None:
    exc = rejected(SchemaError, name, lambda: geometry(**{name: value}))
    assert "finite" in str(exc)


@pytest.mark.parametrize("name", ["bcx", "bcy", "det_dist", "lambda_", "pix_dim"])
@pytest.mark.parametrize("value", [None, "1.0", True, 1 + 2j, [1.0], np.array([1.0, 2.0])])
def test_geometry_numbers_must_be_real(name: str, value: object) -> None:
    rejected(SchemaTypeError, name, lambda: geometry(**{name: value}))


def test_geometry_optional_angles_must_be_real_when_given() -> None:
    rejected(SchemaTypeError, "det_rotation", lambda: geometry(det_rotation="90"))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (-1, 5), (5,), (1, 2, 3), ()])
def test_geometry_shape_two_positive_ints(shape: tuple[int, ...]) -> None:
    rejected(SchemaError, "shape", lambda: geometry(shape=shape))


@pytest.mark.parametrize("shape", ["ab", None, 5, (2.5, 3), (True, 3), ("4", 3)])
def test_geometry_shape_wrong_type(shape: object) -> None:
    rejected(SchemaTypeError, "shape", lambda: geometry(shape=shape))


# ---------------------------------------------------------------- MaskSchema


def test_mask_seed_example() -> None:
    m = MaskSchema(
        mask=np.ones((512, 512), dtype=np.int32),
        metadata=GeometryMetadata(
            bcx=256.0, bcy=256.0, det_dist=5000.0, lambda_=1.0, pix_dim=0.075, shape=(512, 512)
        ),
        description="Clean mask",
    )
    assert m.version == DEFAULT_SCHEMA_VERSION == "1.0.0"
    assert m.description == "Clean mask"
    assert m.mask.dtype == np.int32
    assert m.metadata.shape == (512, 512)


def test_mask_defaults() -> None:
    m = MaskSchema(mask=np.ones(SHAPE, dtype=np.uint8), metadata=geometry())
    assert m.version == "1.0.0"
    assert m.description is None


def test_mask_list_and_bool() -> None:
    m = MaskSchema(**mask_fields(mask=np.ones(SHAPE, dtype=int).tolist()))
    assert isinstance(m.mask, np.ndarray)
    assert m.mask.shape == SHAPE
    assert MaskSchema(mask=np.zeros(SHAPE, dtype=bool), metadata=geometry()).mask.dtype == bool


@pytest.mark.parametrize("value", [2, -1, 7])
def test_mask_values_zero_or_one(value: int) -> None:
    mask = np.ones(SHAPE, dtype=np.int32)
    mask[0, 0] = value
    exc = rejected(SchemaError, "mask", lambda: MaskSchema(**mask_fields(mask=mask)))
    assert "0 or 1" in str(exc)


def test_mask_shape_must_equal_metadata_shape() -> None:
    exc = rejected(
        SchemaError, "mask", lambda: MaskSchema(**mask_fields(mask=np.ones((5, 6), np.int32)))
    )
    assert "metadata.shape" in str(exc)
    rejected(SchemaError, "mask", lambda: MaskSchema(**mask_fields(mask=np.ones(30, np.int32))))


def test_mask_field_types() -> None:
    rejected(SchemaTypeError, "mask", lambda: MaskSchema(**mask_fields(mask=np.ones(SHAPE))))
    rejected(SchemaTypeError, "metadata", lambda: MaskSchema(**mask_fields(metadata=5)))
    rejected(SchemaTypeError, "version", lambda: MaskSchema(**mask_fields(version=1)))
    rejected(SchemaTypeError, "description", lambda: MaskSchema(**mask_fields(description=3)))


def test_mask_metadata_must_itself_be_valid() -> None:
    bad = GeometryMetadata.unchecked(**geometry_fields(det_dist=-1.0))
    rejected(SchemaError, "det_dist", lambda: MaskSchema(**mask_fields(metadata=bad)))


def test_mask_metadata_as_dict_is_coerced() -> None:
    m = MaskSchema(**mask_fields(metadata=geometry_fields()))
    assert isinstance(m.metadata, GeometryMetadata)
    assert m.metadata == geometry()


# ---------------------------------------------------------------- PartitionSchema


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16, np.int32, np.int64, int]
)
def test_partition_any_integer_label_width(dtype: npt.DTypeLike) -> None:
    p = PartitionSchema(**partition_fields(dtype))
    assert p.partition_map.dtype == np.dtype(dtype)
    assert p.num_pts == 4


def test_partition_defaults_and_coercion() -> None:
    fields = partition_fields()
    del fields["mask"], fields["method"]
    fields["val_list"] = fields["val_list"].tolist()
    fields["num_list"] = tuple(int(v) for v in fields["num_list"])
    fields["num_pts"] = np.int64(4)
    p = PartitionSchema(**fields)
    assert p.version == "1.0.0"
    assert p.mask is None
    assert p.method is None
    assert type(p.num_pts) is int
    assert isinstance(p.val_list, np.ndarray)
    assert isinstance(p.num_list, np.ndarray)


def test_partition_labels_must_be_integers() -> None:
    rejected(
        SchemaTypeError,
        "partition_map",
        lambda: PartitionSchema(**partition_fields(np.float32)),
    )


def test_partition_map_shape_must_equal_metadata() -> None:
    labels = np.ones((SHAPE[1], SHAPE[0]), dtype=np.uint8)
    rejected(
        SchemaError,
        "partition_map",
        lambda: PartitionSchema(**partition_fields(partition_map=labels, mask=None)),
    )
    rejected(
        SchemaError,
        "partition_map",
        lambda: PartitionSchema(**partition_fields(partition_map=np.ones(30, np.uint8))),
    )


@pytest.mark.parametrize("num_pts", [0, -3])
def test_partition_num_pts_positive(num_pts: int) -> None:
    rejected(SchemaError, "num_pts", lambda: PartitionSchema(**partition_fields(num_pts=num_pts)))


@pytest.mark.parametrize("num_pts", [2.5, "4", True, None])
def test_partition_num_pts_integer(num_pts: object) -> None:
    rejected(
        SchemaTypeError, "num_pts", lambda: PartitionSchema(**partition_fields(num_pts=num_pts))
    )


@pytest.mark.parametrize("name", ["val_list", "num_list"])
def test_partition_lists_length_num_pts_and_1d(name: str) -> None:
    exc = rejected(
        SchemaError, name, lambda: PartitionSchema(**partition_fields(**{name: np.ones(5)}))
    )
    assert "num_pts" in str(exc)
    rejected(
        SchemaError, name, lambda: PartitionSchema(**partition_fields(**{name: np.ones((4, 1))}))
    )
    rejected(
        SchemaTypeError,
        name,
        lambda: PartitionSchema(**partition_fields(**{name: np.array(["a"] * 4)})),
    )


def test_partition_counts_non_negative_and_lists_finite() -> None:
    rejected(
        SchemaError,
        "num_list",
        lambda: PartitionSchema(**partition_fields(num_list=np.array([1, -1, 2, 3]))),
    )
    rejected(
        SchemaError,
        "val_list",
        lambda: PartitionSchema(**partition_fields(val_list=[0.1, np.nan, 0.2, 0.3])),
    )
    rejected(
        SchemaError,
        "num_list",
        lambda: PartitionSchema(**partition_fields(num_list=[1.0, np.inf, 2.0, 3.0])),
    )


@pytest.mark.parametrize("value", [5, -1])
def test_partition_labels_within_zero_and_num_pts(value: int) -> None:
    labels = partition_fields(np.int32)["partition_map"].copy()
    labels[0, 0] = value
    exc = rejected(
        SchemaError,
        "partition_map",
        lambda: PartitionSchema(**partition_fields(np.int32, partition_map=labels)),
    )
    assert "num_pts" in str(exc)


def test_partition_mask_same_shape_and_binary() -> None:
    rejected(
        SchemaError,
        "mask",
        lambda: PartitionSchema(**partition_fields(mask=np.ones((2, 2), np.uint8))),
    )
    rejected(
        SchemaError,
        "mask",
        lambda: PartitionSchema(**partition_fields(mask=np.full(SHAPE, 2, np.uint8))),
    )


def test_partition_method() -> None:
    assert PartitionSchema(**partition_fields(method="log")).method == "log"
    rejected(SchemaError, "method", lambda: PartitionSchema(**partition_fields(method="cubic")))
    rejected(SchemaTypeError, "method", lambda: PartitionSchema(**partition_fields(method=1)))


def test_partition_version_must_be_string() -> None:
    rejected(SchemaTypeError, "version", lambda: PartitionSchema(**partition_fields(version=1.0)))


# ---------------------------------------------------------------- dict round trips


@pytest.mark.parametrize("cls", list(BUILDERS))
def test_to_dict_from_dict_round_trip(cls: type[Schema]) -> None:
    obj = cls(**BUILDERS[cls]())
    data = obj.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(cls)}
    back = cls.from_dict(data)
    assert back == obj
    assert type(back) is cls
    for name, value in data.items():
        if isinstance(value, np.ndarray):
            assert getattr(back, name).dtype == value.dtype


def test_to_dict_nests_metadata_as_dict_and_keeps_arrays() -> None:
    data = MaskSchema(**mask_fields()).to_dict()
    assert isinstance(data["metadata"], dict)
    assert data["metadata"]["shape"] == list(SHAPE)
    assert isinstance(data["mask"], np.ndarray)
    assert data["version"] == "1.0.0"


@pytest.mark.parametrize("cls", [MaskSchema, PartitionSchema])
def test_from_dict_nested_metadata_given_as_dict(cls: type[Schema]) -> None:
    data = BUILDERS[cls]()
    data["metadata"] = geometry_fields(shape=list(SHAPE))
    obj = cls.from_dict(data)
    metadata = getattr(obj, "metadata")  # noqa: B009  (generic over the two classes)
    assert isinstance(metadata, GeometryMetadata)
    assert metadata.shape == SHAPE


@pytest.mark.parametrize("cls", list(BUILDERS))
def test_from_dict_unknown_key_rejected(cls: type[Schema]) -> None:
    data = cls(**BUILDERS[cls]()).to_dict()
    data["colour"] = "blue"
    exc = rejected(SchemaError, "colour", lambda: cls.from_dict(data))
    assert cls.__name__ in str(exc)


@pytest.mark.parametrize(
    ("cls", "missing"),
    [
        (QMapSchema, "dqmap"),
        (G2Data, "q_values"),
        (GeometryMetadata, "pix_dim"),
        (MaskSchema, "metadata"),
        (PartitionSchema, "num_pts"),
    ],
)
def test_from_dict_missing_key_rejected(cls: type[Schema], missing: str) -> None:
    data = cls(**BUILDERS[cls]()).to_dict()
    del data[missing]
    rejected(SchemaError, missing, lambda: cls.from_dict(data))


def test_from_dict_optional_keys_may_be_missing() -> None:
    data = MaskSchema(**mask_fields()).to_dict()
    del data["version"], data["description"]
    m = MaskSchema.from_dict(data)
    assert (m.version, m.description) == ("1.0.0", None)


def test_from_dict_errors_inside_nested_metadata() -> None:
    data = MaskSchema(**mask_fields()).to_dict()
    data["metadata"]["wavelength"] = 1.0
    rejected(SchemaError, "wavelength", lambda: MaskSchema.from_dict(data))
    data = MaskSchema(**mask_fields()).to_dict()
    data["metadata"]["lambda_"] = float("nan")
    rejected(SchemaError, "lambda_", lambda: MaskSchema.from_dict(data))


def test_from_dict_not_a_mapping() -> None:
    with pytest.raises(SchemaTypeError, match="mapping"):
        GeometryMetadata.from_dict([("bcx", 1.0)])  # type: ignore[arg-type]


def test_from_dict_validate_false_builds_unchecked() -> None:
    data = MaskSchema(**mask_fields()).to_dict()
    data["mask"] = np.full(SHAPE, 3, np.int32)
    rejected(SchemaError, "mask", lambda: MaskSchema.from_dict(data))
    m = MaskSchema.from_dict(data, validate=False)
    assert int(m.mask.max()) == 3
    rejected(SchemaError, "mask", m.validate)


# ---------------------------------------------------------------- unchecked / validate


@pytest.mark.parametrize(
    ("cls", "field", "bad"),
    [
        (QMapSchema, "phis", np.full(SHAPE, np.nan)),
        (G2Data, "delay_times", [3.0, 2.0, 1.0, 0.0]),
        (GeometryMetadata, "pix_dim", -0.075),
        (MaskSchema, "mask", np.full(SHAPE, 2, np.int32)),
        (PartitionSchema, "num_pts", 0),
    ],
)
def test_unchecked_skips_rules_and_validate_raises(
    cls: type[Schema], field: str, bad: object
) -> None:
    obj = cls.unchecked(**BUILDERS[cls](**{field: bad}))
    assert isinstance(obj, cls)
    value = getattr(obj, field)
    if isinstance(bad, list):
        assert isinstance(value, np.ndarray)  # coercion still happens
    rejected(SchemaError, field, obj.validate)
    cls(**BUILDERS[cls]()).validate()  # a valid object validates silently


@pytest.mark.parametrize(
    ("cls", "field", "bad"),
    [
        (QMapSchema, "sqmap", "not an array"),
        (QMapSchema, "mask", b"bytes"),
        (G2Data, "g2", None),
        (GeometryMetadata, "bcx", "256"),
        (GeometryMetadata, "det_dist", None),
        (GeometryMetadata, "shape", None),
        (GeometryMetadata, "shape", (48.0, 40.0)),
        (MaskSchema, "mask", {"not": "an array"}),
        (MaskSchema, "metadata", "geometry"),
        (PartitionSchema, "num_pts", "four"),
        (PartitionSchema, "val_list", None),
    ],
)
def test_validate_of_unchecked_wrong_types_is_schema_type_error(
    cls: type[Schema], field: str, bad: object
) -> None:
    # Never an AttributeError or a bare TypeError without a field.
    obj = cls.unchecked(**BUILDERS[cls](**{field: bad}))
    rejected(SchemaTypeError, field, obj.validate)


# ---------------------------------------------------------------- equality, frozen, repr


def test_equality_is_nan_aware() -> None:
    err = np.full((4, 3), 0.01, dtype=np.float32)
    err[1, 2] = np.nan
    a = G2Data(**g2_fields(g2_err=err))
    b = G2Data(**g2_fields(g2_err=err.copy()))
    assert a == b
    other = err.copy()
    other[0, 0] = 0.02
    assert a != G2Data(**g2_fields(g2_err=other))


def test_equality_is_dtype_sensitive() -> None:
    a = MaskSchema(**mask_fields(mask=np.ones(SHAPE, np.int32)))
    assert a == MaskSchema(**mask_fields(mask=np.ones(SHAPE, np.int32)))
    assert a != MaskSchema(**mask_fields(mask=np.ones(SHAPE, np.int64)))
    assert a != MaskSchema(**mask_fields(mask=np.ones(SHAPE, np.int32), description="other"))
    assert a != MaskSchema(**mask_fields(metadata=geometry(bcx=1.0)))
    assert geometry() == geometry()
    assert geometry() != geometry(det_rotation=0.0)


def test_equality_with_other_types() -> None:
    m = MaskSchema(**mask_fields())
    assert m != m.metadata
    assert m != m.to_dict()
    assert m.__eq__(42) is NotImplemented
    with pytest.raises(TypeError):
        hash(m)


@pytest.mark.parametrize("cls", list(BUILDERS))
def test_schemas_are_frozen(cls: type[Schema]) -> None:
    obj = cls(**BUILDERS[cls]())
    name = dataclasses.fields(cls)[0].name
    before = getattr(obj, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, None)
    assert getattr(obj, name) is before


def test_repr_summarises_arrays() -> None:
    m = MaskSchema(
        mask=np.ones((512, 512), dtype=np.int32),
        metadata=GeometryMetadata(
            bcx=256.0, bcy=256.0, det_dist=5000.0, lambda_=1.0, pix_dim=0.075, shape=(512, 512)
        ),
        description="Clean mask",
    )
    text = repr(m)
    assert len(text) < 300
    assert text.startswith("MaskSchema(")
    assert "int32 512x512" in text
    assert "Clean mask" in text
    assert "bcx=256.0" in text
    assert "[" not in text.replace("[512", "")  # no array dump
    q = repr(QMapSchema(**qmap_fields()))
    assert "float32 6x5" in q
    assert "uint16 6x5" in q
    assert "\n" not in q


@pytest.mark.parametrize("cls", list(BUILDERS))
def test_repr_is_short_for_every_schema(cls: type[Schema]) -> None:
    text = repr(cls(**BUILDERS[cls]()))
    assert text.startswith(f"{cls.__name__}(")
    assert len(text) < 400
    assert "array(" not in text


# ---------------------------------------------------------------- property-based geometry

FLOATS = st.floats(allow_nan=True, allow_infinity=True)
ANYTHING = st.one_of(
    FLOATS,
    st.integers(min_value=-(2**1100), max_value=2**1100),  # beyond float range too
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.complex_numbers(max_magnitude=10),
    st.floats(width=32).map(np.float32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
)


def _check_geometry(kwargs: dict[str, Any]) -> None:
    error: SchemaError | SchemaTypeError | None = None
    try:
        g = GeometryMetadata(**kwargs)
    except (SchemaError, SchemaTypeError) as exc:
        error = exc
    if error is not None:
        assert error.field is not None
        assert error.field in str(error)
        return
    for name in ("bcx", "bcy", "det_dist", "lambda_", "pix_dim"):
        value = getattr(g, name)
        assert type(value) is float
        assert math.isfinite(value)
    assert g.det_dist > 0
    assert g.lambda_ > 0
    assert g.pix_dim > 0
    for name in ("det_rotation", "incident_angle"):
        value = getattr(g, name)
        assert value is None or (type(value) is float and math.isfinite(value))
    assert len(g.shape) == 2
    assert all(type(v) is int and v > 0 for v in g.shape)
    assert GeometryMetadata.from_dict(g.to_dict()) == g


@settings(max_examples=400, deadline=None)
@given(
    bcx=FLOATS,
    bcy=FLOATS,
    det_dist=FLOATS,
    lambda_=FLOATS,
    pix_dim=FLOATS,
    angles=st.tuples(st.none() | FLOATS, st.none() | FLOATS),
    shape=st.tuples(st.integers(-5, 5000), st.integers(-5, 5000)),
)
def test_geometry_from_arbitrary_floats(
    bcx: float,
    bcy: float,
    det_dist: float,
    lambda_: float,
    pix_dim: float,
    angles: tuple[float | None, float | None],
    shape: tuple[int, int],
) -> None:
    _check_geometry(
        {
            "bcx": bcx,
            "bcy": bcy,
            "det_dist": det_dist,
            "lambda_": lambda_,
            "pix_dim": pix_dim,
            "det_rotation": angles[0],
            "incident_angle": angles[1],
            "shape": shape,
        }
    )


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(ANYTHING, min_size=7, max_size=7),
    shape=st.one_of(
        st.lists(st.integers(-(2**70), 2**70), max_size=3),
        st.lists(ANYTHING, max_size=3).map(tuple),
        ANYTHING,
    ),
)
def test_geometry_from_arbitrary_values(values: list[Any], shape: Any) -> None:
    names = ("bcx", "bcy", "det_dist", "lambda_", "pix_dim", "det_rotation", "incident_angle")
    _check_geometry({**dict(zip(names, values, strict=True)), "shape": shape})


# ---------------------------------------------------------------- stored values of wrong type


@pytest.fixture
def facade() -> HDF5Facade:
    return HDF5Facade(pool=HDF5ConnectionPool(max_size=4))


def _small_file(tmp_path: Path) -> Path:
    return write_native_file(tmp_path / "f.hdf5", DemoSpec(shape=(12, 10), n_delay=6, n_q=3))


def test_stored_string_where_number_belongs_is_validation_error(
    facade: HDF5Facade, tmp_path: Path
) -> None:
    path = _small_file(tmp_path)
    with h5py.File(path, "a") as f:
        del f["/xpcs/metadata/bcx"]
        f["/xpcs/metadata/bcx"] = "centre"
    with pytest.raises(HDF5ValidationError, match="bcx") as info:
        facade.read_geometry_metadata(path)
    assert info.value.field == "bcx"
    unchecked = HDF5Facade(pool=facade.pool, validate=False).read_geometry_metadata(path)
    assert unchecked.bcx == b"centre"  # type: ignore[comparison-overlap]


def test_stored_float_height_width_is_validation_error(facade: HDF5Facade, tmp_path: Path) -> None:
    path = _small_file(tmp_path)
    with h5py.File(path, "a") as f:
        g = f["/xpcs/metadata"]
        del g.attrs["shape"]
        g["height"], g["width"] = 12.0, 10.0
    with pytest.raises(HDF5ValidationError, match="shape") as info:
        facade.read_geometry_metadata(path)
    assert info.value.field == "shape"


def test_stored_string_map_is_validation_error(facade: HDF5Facade, tmp_path: Path) -> None:
    path = _small_file(tmp_path)
    with h5py.File(path, "a") as f:
        del f["/xpcs/qmap/phis"]
        f["/xpcs/qmap/phis"] = "not a map"
    with pytest.raises(HDF5ValidationError, match="phis") as info:
        facade.read_qmap(path)
    assert info.value.field == "phis"
