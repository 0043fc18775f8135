"""Validated, typed containers for XPCS data: q-maps, G2, geometry, masks and partitions.

Each schema is a frozen dataclass holding numpy arrays. Array-likes (lists, tuples, h5py
datasets read into memory) are coerced on construction and every rule of the data model is
checked there, so an object that exists is valid. A violation raises ``SchemaError`` (a
``ValueError``) or ``SchemaTypeError`` (a ``TypeError``) whose ``field`` attribute and message
name the field and what was wrong.

``Schema.unchecked(**fields)`` builds an object with the coercion but without the rules; it
is what ``validate=False`` returns. ``obj.validate()`` runs the rules on demand.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from xpcs_io.errors import SchemaError, SchemaTypeError

__all__ = [
    "DEFAULT_SCHEMA_VERSION",
    "G2Data",
    "GeometryMetadata",
    "IntensityTimeData",
    "MaskSchema",
    "PartitionSchema",
    "QMapSchema",
    "Saxs1DData",
    "Saxs2DData",
    "Schema",
]

DEFAULT_SCHEMA_VERSION = "1.0.0"
Q_UNITS = frozenset({"nm^-1", "A^-1"})
PHI_UNITS = frozenset({"rad", "deg"})
PARTITION_METHODS = frozenset({"linear", "log"})

# Set while ``unchecked`` builds an object, so __post_init__ coerces without validating.
_SKIP_VALIDATION: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xpcs_io_skip_validation", default=False
)

Array = npt.NDArray[Any]


# ---------------------------------------------------------------- coercion and checks


def _as_array(value: Any, field: str) -> Array:
    if isinstance(value, np.ndarray):
        return value
    if value is None or isinstance(value, str | bytes | Mapping):
        raise SchemaTypeError(
            f"{field}: expected an array, got {type(value).__name__}", field=field
        )
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise SchemaTypeError(f"{field}: cannot be read as an array ({exc})", field=field) from exc
    return arr


def _require_array(arr: Any, field: str) -> None:
    # validate() also runs on ``unchecked`` objects, whose fields may hold anything.
    if not isinstance(arr, np.ndarray):
        raise SchemaTypeError(f"{field}: expected an array, got {type(arr).__name__}", field=field)


def _check_numeric(arr: Array, field: str, *, kinds: str = "biuf") -> None:
    _require_array(arr, field)
    if arr.dtype.kind not in kinds:
        names = {"b": "bool", "i": "int", "u": "uint", "f": "float", "c": "complex"}
        allowed = "/".join(names[k] for k in kinds)
        raise SchemaTypeError(
            f"{field}: dtype {arr.dtype} is not allowed (expected {allowed})", field=field
        )


def _check_ndim(arr: Array, ndim: int, field: str) -> None:
    _require_array(arr, field)
    if arr.ndim != ndim:
        raise SchemaError(
            f"{field}: expected a {ndim}-D array, got {arr.ndim}-D with shape {arr.shape}",
            field=field,
        )


def _check_finite(arr: Array, field: str) -> None:
    # min/max propagate NaN and expose Inf in two passes without a temporary bool array,
    # which matters on 4-megapixel maps.
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(np.count_nonzero(np.isinf(arr)))
        raise SchemaError(
            f"{field}: contains non-finite values ({n_nan} NaN, {n_inf} Inf)", field=field
        )


def _check_binary(arr: Array, field: str) -> None:
    _check_numeric(arr, field, kinds="biu")
    if arr.dtype.kind == "b" or arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 1:
        raise SchemaError(f"{field}: values must be 0 or 1, found range [{lo}, {hi}]", field=field)


def _check_same_shape(arr: Array, shape: tuple[int, ...], field: str, ref: str) -> None:
    _require_array(arr, field)
    if arr.shape != shape:
        raise SchemaError(
            f"{field}: shape {arr.shape} does not match {ref} shape {shape}", field=field
        )


def _as_float(value: Any, field: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            return float(value)
        raise SchemaTypeError(
            f"{field}: expected a real number, got {type(value).__name__}", field=field
        )
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: infinite for the finiteness rule
        big: Any = value
        return math.inf if big > 0 else -math.inf


def _check_float(value: Any, field: str, *, positive: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, float):
        raise SchemaTypeError(
            f"{field}: expected a real number, got {type(value).__name__}", field=field
        )
    if not math.isfinite(value):
        raise SchemaError(f"{field}: must be finite, got {value}", field=field)
    if positive and not value > 0:
        raise SchemaError(f"{field}: must be > 0, got {value}", field=field)


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
            return int(value)
        raise SchemaTypeError(
            f"{field}: expected an integer, got {type(value).__name__}", field=field
        )
    return int(value)


def _check_str(value: Any, field: str, *, allowed: frozenset[str] | None = None) -> None:
    if not isinstance(value, str):
        raise SchemaTypeError(
            f"{field}: expected a string, got {type(value).__name__}", field=field
        )
    if allowed is not None and value not in allowed:
        raise SchemaError(f"{field}: {value!r} is not one of {sorted(allowed)}", field=field)


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    return bool(a == b)


# ---------------------------------------------------------------- the base class


_FIELD_NAMES: dict[type, tuple[frozenset[str], tuple[str, ...]]] = {}


def _field_names(cls: type[Any]) -> tuple[frozenset[str], tuple[str, ...]]:
    """A schema class's field names and its required ones, in order (worked out once per
    class: a many-file answer builds hundreds of results)."""
    found = _FIELD_NAMES.get(cls)
    if found is None:
        fields = dataclasses.fields(cls)
        required = tuple(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        found = _FIELD_NAMES[cls] = (frozenset(f.name for f in fields), required)
    return found


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Schema:
    """Common behaviour: coercion, validation, dict round trip, equality and a short repr."""

    #: Fields that hold numpy arrays (coerced on construction).
    _array_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields that hold a nested schema.
    _nested: ClassVar[Mapping[str, type[Schema]]] = {}

    def __post_init__(self) -> None:
        self._coerce()
        if not _SKIP_VALIDATION.get():
            self.validate()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _coerce(self) -> None:
        for name in self._array_fields:
            value = getattr(self, name)
            if value is not None and not isinstance(value, np.ndarray):
                try:
                    self._set(name, _as_array(value, name))
                except SchemaTypeError:
                    if not _SKIP_VALIDATION.get():
                        raise
        for name, cls in self._nested.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                self._set(name, cls.from_dict(value))

    def validate(self) -> None:
        """Check every rule of the schema.

        Raises:
            SchemaError: a value breaks a rule (``ValueError``).
            SchemaTypeError: a value has the wrong type (``TypeError``).
        """

    @classmethod
    def unchecked(cls, **fields: Any) -> Self:
        """Build an instance with coercion only, skipping the validation rules."""
        token = _SKIP_VALIDATION.set(True)
        try:
            return cls(**fields)
        finally:
            _SKIP_VALIDATION.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a dict; nested schemas become dicts, arrays stay arrays."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Schema):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, validate: bool = True) -> Self:
        """Build an instance from ``to_dict()`` output (or a decoded wire message).

        Raises:
            SchemaError: a required field is missing, an unknown field is present, or a
                rule is broken.
            SchemaTypeError: ``data`` is not a mapping or a field has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise SchemaTypeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        known, required = _field_names(cls)
        if not known.issuperset(data):
            unknown = sorted(str(k) for k in data if k not in known)
            raise SchemaError(f"{cls.__name__}: unknown field(s) {unknown}", field=unknown[0])
        missing = [name for name in required if name not in data]
        if missing:
            raise SchemaError(
                f"{cls.__name__}: missing required field(s) {missing}", field=missing[0]
            )
        kwargs = dict(data)
        for name, sub in cls._nested.items():
            value = kwargs.get(name)
            if isinstance(value, Mapping):
                kwargs[name] = sub.from_dict(value, validate=validate)
        return cls(**kwargs) if validate else cls.unchecked(**kwargs)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            _values_equal(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # holds mutable arrays

    def _summary(self) -> Iterator[str]:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                yield f"{f.name}=<{value.dtype} {'x'.join(map(str, value.shape)) or 'scalar'}>"
            elif isinstance(value, Schema) or value is not None:
                yield f"{f.name}={value!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._summary())})"


# ---------------------------------------------------------------- the five schemas


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class GeometryMetadata(Schema):
    """Detector geometry: beam centre (pixels; ``bcx`` is the column), distances in mm,
    wavelength in Angstrom, ``shape`` as (height, width) and optional angles in degrees."""

    bcx: float
    bcy: float
    det_dist: float
    lambda_: float
    pix_dim: float
    shape: tuple[int, int]
    det_rotation: float | None = None
    incident_angle: float | None = None

    def _coerce(self) -> None:
        skip = _SKIP_VALIDATION.get()
        for name in ("bcx", "bcy", "det_dist", "lambda_", "pix_dim"):
            try:
                self._set(name, _as_float(getattr(self, name), name))
            except SchemaTypeError:
                if not skip:
                    raise
        for name in ("det_rotation", "incident_angle"):
            try:
                self._set(name, _as_float(getattr(self, name), name, optional=True))
            except SchemaTypeError:
                if not skip:
                    raise
        shape = self.shape
        if isinstance(shape, np.ndarray):
            shape = shape.tolist()
        if isinstance(shape, list | tuple):
            try:
                self._set("shape", tuple(_as_int(v, "shape") for v in shape))
            except SchemaTypeError:
                if not skip:
                    raise
        elif not skip:
            raise SchemaTypeError(
                f"shape: expected (height, width), got {type(shape).__name__}", field="shape"
            )

    def validate(self) -> None:
        for name in ("bcx", "bcy"):
            _check_float(getattr(self, name), name)
        for name in ("det_dist", "lambda_", "pix_dim"):
            _check_float(getattr(self, name), name, positive=True)
        for name in ("det_rotation", "incident_angle"):
            _check_float(getattr(self, name), name, optional=True)
        if not isinstance(self.shape, tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in self.shape
        ):
            raise SchemaTypeError(
                f"shape: expected a tuple of integers (height, width), got {self.shape!r}",
                field="shape",
            )
        if len(self.shape) != 2 or any(v <= 0 for v in self.shape):
            raise SchemaError(
                f"shape: expected two positive integers (height, width), got {self.shape}",
                field="shape",
            )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class QMapSchema(Schema):
    """Per-pixel static and dynamic q and azimuth maps, with optional mask and label map."""

    sqmap: Array
    dqmap: Array
    phis: Array
    sqmap_unit: str = "nm^-1"
    dqmap_unit: str = "nm^-1"
    phis_unit: str = "rad"
    mask: Array | None = None
    partition_map: Array | None = None

    _array_fields = ("sqmap", "dqmap", "phis", "mask", "partition_map")

    def validate(self) -> None:
        _check_numeric(self.sqmap, "sqmap")
        _check_ndim(self.sqmap, 2, "sqmap")
        shape = self.sqmap.shape
        for name in ("dqmap", "phis"):
            arr = getattr(self, name)
            _check_numeric(arr, name)
            _check_ndim(arr, 2, name)
            _check_same_shape(arr, shape, name, "sqmap")
        _check_str(self.sqmap_unit, "sqmap_unit", allowed=Q_UNITS)
        _check_str(self.dqmap_unit, "dqmap_unit", allowed=Q_UNITS)
        _check_str(self.phis_unit, "phis_unit", allowed=PHI_UNITS)
        for name in ("sqmap", "dqmap", "phis"):
            _check_finite(getattr(self, name), name)
        if self.mask is not None:
            _check_same_shape(self.mask, shape, "mask", "sqmap")
            _check_binary(self.mask, "mask")
        if self.partition_map is not None:
            _check_numeric(self.partition_map, "partition_map", kinds="iu")
            _check_same_shape(self.partition_map, shape, "partition_map", "sqmap")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class G2Data(Schema):
    """Multi-tau correlation: ``g2`` and ``g2_err`` shaped (n_delay, n_q), delays in seconds;
    optional ``phi_values`` (n_q,) in degrees, the azimuth of each column when the partition
    has several phi sectors (columns then share a q)."""

    g2: Array
    g2_err: Array
    delay_times: Array
    q_values: Array
    phi_values: Array | None = None

    _array_fields = ("g2", "g2_err", "delay_times", "q_values", "phi_values")

    def validate(self) -> None:
        _check_numeric(self.g2, "g2", kinds="f")
        _check_ndim(self.g2, 2, "g2")
        _check_numeric(self.g2_err, "g2_err", kinds="f")
        _check_ndim(self.g2_err, 2, "g2_err")
        _check_same_shape(self.g2_err, self.g2.shape, "g2_err", "g2")
        n_delay, n_q = self.g2.shape
        _check_numeric(self.delay_times, "delay_times", kinds="iuf")
        _check_ndim(self.delay_times, 1, "delay_times")
        if self.delay_times.shape[0] != n_delay:
            raise SchemaError(
                f"delay_times: length {self.delay_times.shape[0]} does not match "
                f"n_delay={n_delay} (g2 is (n_delay, n_q) = {self.g2.shape})",
                field="delay_times",
            )
        _check_numeric(self.q_values, "q_values", kinds="iuf")
        _check_ndim(self.q_values, 1, "q_values")
        if self.q_values.shape[0] != n_q:
            raise SchemaError(
                f"q_values: length {self.q_values.shape[0]} does not match n_q={n_q} "
                f"(g2 is (n_delay, n_q) = {self.g2.shape})",
                field="q_values",
            )
        _check_finite(self.g2, "g2")
        _check_finite(self.q_values, "q_values")
        _check_finite(self.delay_times, "delay_times")
        if n_delay and self.delay_times.min() < 0:
            raise SchemaError("delay_times: must be >= 0", field="delay_times")
        # Compare neighbours rather than np.diff, which wraps around on unsigned integers.
        if n_delay > 1 and not bool(np.all(self.delay_times[1:] > self.delay_times[:-1])):
            raise SchemaError("delay_times: must be strictly increasing", field="delay_times")
        if self.g2_err.size and bool(np.nanmin(self.g2_err, initial=0.0) < 0):
            raise SchemaError("g2_err: must be >= 0 (NaN is allowed)", field="g2_err")
        if self.g2_err.size and bool(np.isinf(self.g2_err).any()):
            raise SchemaError("g2_err: must not contain Inf (NaN is allowed)", field="g2_err")
        if self.phi_values is not None:
            _check_numeric(self.phi_values, "phi_values", kinds="iuf")
            _check_ndim(self.phi_values, 1, "phi_values")
            if self.phi_values.shape[0] != n_q:
                raise SchemaError(
                    f"phi_values: length {self.phi_values.shape[0]} does not match n_q={n_q}",
                    field="phi_values",
                )
            _check_finite(self.phi_values, "phi_values")


def _check_vector(arr: Any, field: str, length: int | None = None, kinds: str = "iuf") -> int:
    _check_numeric(arr, field, kinds=kinds)
    _check_ndim(arr, 1, field)
    if length is not None and arr.shape[0] != length:
        raise SchemaError(f"{field}: length {arr.shape[0]} does not match {length}", field=field)
    return int(arr.shape[0])


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Saxs2DData(Schema):
    """Time-averaged scattering image ``image`` (H, W) as stored (float), in ``unit``
    (the file's unit attribute, "a.u." when it names none)."""

    image: Array
    unit: str = "a.u."

    _array_fields = ("image",)

    def validate(self) -> None:
        _check_numeric(self.image, "image", kinds="iuf")
        _check_ndim(self.image, 2, "image")
        _check_str(self.unit, "unit")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Saxs1DData(Schema):
    """Azimuthally binned scattering, one entry per stored static bin: ``q`` (n,) in
    ``q_unit``, ``intensity`` (n,) in ``intensity_unit``, ``intensity_segments``
    (n_segments, n) (the same curve over consecutive parts of the measurement, for the
    stability plot; (0, n) when the file stores none) and ``phi`` (n,) in degrees when the
    static partition has several phi sectors (else ``None``). NaN intensities are allowed
    (empty bins)."""

    q: Array
    intensity: Array
    intensity_segments: Array
    q_unit: str = "A^-1"
    intensity_unit: str = "a.u."
    phi: Array | None = None

    _array_fields = ("q", "intensity", "intensity_segments", "phi")

    def validate(self) -> None:
        n = _check_vector(self.q, "q", kinds="f")
        _check_finite(self.q, "q")
        _check_vector(self.intensity, "intensity", n, kinds="iuf")
        _check_numeric(self.intensity_segments, "intensity_segments", kinds="iuf")
        _check_ndim(self.intensity_segments, 2, "intensity_segments")
        if self.intensity_segments.shape[1] != n:
            raise SchemaError(
                f"intensity_segments: shape {self.intensity_segments.shape} does not match "
                f"(n_segments, {n})",
                field="intensity_segments",
            )
        _check_str(self.q_unit, "q_unit", allowed=Q_UNITS)
        _check_str(self.intensity_unit, "intensity_unit")
        if self.phi is not None:
            _check_vector(self.phi, "phi", n, kinds="iuf")
            _check_finite(self.phi, "phi")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class IntensityTimeData(Schema):
    """Mean detector intensity per frame: ``time`` (N,) in seconds from the first frame,
    ``intensity`` (N,) in ``unit``."""

    time: Array
    intensity: Array
    unit: str = "a.u."

    _array_fields = ("time", "intensity")

    def validate(self) -> None:
        n = _check_vector(self.time, "time", kinds="iuf")
        _check_vector(self.intensity, "intensity", n, kinds="iuf")
        _check_finite(self.time, "time")
        if n > 1 and not bool(np.all(self.time[1:] > self.time[:-1])):
            raise SchemaError("time: must be strictly increasing", field="time")
        _check_str(self.unit, "unit")


def _check_metadata(metadata: Any) -> GeometryMetadata:
    if not isinstance(metadata, GeometryMetadata):
        raise SchemaTypeError(
            f"metadata: expected GeometryMetadata, got {type(metadata).__name__}",
            field="metadata",
        )
    metadata.validate()
    return metadata


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MaskSchema(Schema):
    """A 0/1 detector mask (1 = use the pixel) with the geometry it was drawn for."""

    mask: Array
    metadata: GeometryMetadata
    version: str = DEFAULT_SCHEMA_VERSION
    description: str | None = None

    _array_fields = ("mask",)
    _nested = {"metadata": GeometryMetadata}  # noqa: RUF012  (ClassVar in the base)

    def validate(self) -> None:
        metadata = _check_metadata(self.metadata)
        _check_ndim(self.mask, 2, "mask")
        _check_binary(self.mask, "mask")
        _check_same_shape(self.mask, metadata.shape, "mask", "metadata.shape")
        _check_str(self.version, "version")
        if self.description is not None:
            _check_str(self.description, "description")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class PartitionSchema(Schema):
    """An integer label map (0 = excluded, 1..num_pts = bins) with each bin's centre
    (``val_list``) and pixel count (``num_list``)."""

    partition_map: Array
    num_pts: int
    val_list: Array
    num_list: Array
    metadata: GeometryMetadata
    version: str = DEFAULT_SCHEMA_VERSION
    mask: Array | None = None
    method: str | None = None

    _array_fields = ("partition_map", "val_list", "num_list", "mask")
    _nested = {"metadata": GeometryMetadata}  # noqa: RUF012  (ClassVar in the base)

    def _coerce(self) -> None:
        super()._coerce()
        try:
            self._set("num_pts", _as_int(self.num_pts, "num_pts"))
        except SchemaTypeError:
            if not _SKIP_VALIDATION.get():
                raise

    def validate(self) -> None:
        metadata = _check_metadata(self.metadata)
        _check_numeric(self.partition_map, "partition_map", kinds="iu")
        _check_ndim(self.partition_map, 2, "partition_map")
        _check_same_shape(self.partition_map, metadata.shape, "partition_map", "metadata.shape")
        if isinstance(self.num_pts, bool) or not isinstance(self.num_pts, int):
            raise SchemaTypeError(
                f"num_pts: expected an integer, got {type(self.num_pts).__name__}",
                field="num_pts",
            )
        if self.num_pts <= 0:
            raise SchemaError(f"num_pts: must be > 0, got {self.num_pts}", field="num_pts")
        for name in ("val_list", "num_list"):
            arr = getattr(self, name)
            _check_numeric(arr, name, kinds="iuf")
            _check_ndim(arr, 1, name)
            if arr.shape[0] != self.num_pts:
                raise SchemaError(
                    f"{name}: length {arr.shape[0]} does not match num_pts={self.num_pts}",
                    field=name,
                )
        _check_finite(self.val_list, "val_list")
        _check_finite(self.num_list, "num_list")
        if self.num_list.size and self.num_list.min() < 0:
            raise SchemaError("num_list: counts must be >= 0", field="num_list")
        if self.partition_map.size:
            lo, hi = int(self.partition_map.min()), int(self.partition_map.max())
            if lo < 0 or hi > self.num_pts:
                raise SchemaError(
                    f"partition_map: labels must lie in [0, num_pts={self.num_pts}], "
                    f"found [{lo}, {hi}]",
                    field="partition_map",
                )
        if self.mask is not None:
            _check_ndim(self.mask, 2, "mask")
            _check_same_shape(self.mask, self.partition_map.shape, "mask", "partition_map")
            _check_binary(self.mask, "mask")
        _check_str(self.version, "version")
        if self.method is not None:
            _check_str(self.method, "method", allowed=PARTITION_METHODS)
