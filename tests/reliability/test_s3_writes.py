"""S3: data destroyed through the API, against a real server on 127.0.0.1 without keys.

* Hostile write targets: ``POST /v1/mask`` and ``/v1/partition`` with a ``group`` inside a
  version store, over the file's own data, into the other kind's group, or reached through an
  external link (to a file inside the root, and to one outside it), a soft link or a virtual
  dataset. Each is a 4xx, never a 5xx, and every dataset value, attribute and link of the
  file and of every file it links to is the same before and after (the whole HDF5 tree is
  compared, not the bytes: a write replaces the file by a rename), with the version lists
  unchanged.
* Resends: M keys, each sent by K concurrent senders on their own connections plus one whose
  connection is closed right after the request is sent, then resent: one version per key,
  and every answer for a key names the same version.
* Found data: a file holding a mask and a partition in the reference facade's unversioned
  layout, then N writes: the found arrays are still version 1, with the same sha256, after
  every write.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import numpy.typing as npt

from xpcs_io import wire
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import GeometryMetadata, MaskSchema, PartitionSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from ..test_found_versions import GEO, reference_write_mask, reference_write_partition
from ..test_found_versions import SHAPE as FOUND_SHAPE
from ..writesupport import SHAPE, partition
from .support import Figure, geometry, mask_body, port_of, scale, server_5xx, serving, sha256_of

SPEC = DemoSpec(shape=SHAPE, n_delay=6, n_q=3)
KINDS = ("mask", "partition")
MSGPACK = {"content-type": "application/msgpack", "accept": "application/json"}


def _mask(rows: int) -> npt.NDArray[np.uint8]:
    m = np.zeros(SHAPE, np.uint8)
    m[:rows] = 1
    return m


def _partition() -> PartitionSchema:
    return partition(geometry(SHAPE))


def _body(kind: str, rows: int = 3) -> bytes:
    return (
        mask_body(_mask(rows), f"{rows} rows")
        if kind == "mask"
        else wire.pack(_partition().to_dict())
    )


# ---------------------------------------------------------------- the whole HDF5 tree


def _value_digest(value: Any) -> str:
    arr = np.asarray(value)
    if arr.dtype.kind == "O":  # strings and references: their values, not their pointers
        data = repr(arr.tolist()).encode()
    else:
        data = np.ascontiguousarray(arr).tobytes()
    return hashlib.sha256(arr.dtype.str.encode() + repr(arr.shape).encode() + data).hexdigest()


def _attrs_digest(obj: h5py.HLObject) -> str:
    return repr(sorted((k, _value_digest(obj.attrs[k])) for k in obj.attrs))


def tree(path: Path) -> dict[str, str]:
    """Every link, group, dataset value and attribute of the file at ``path``, by HDF5 path
    (external and soft links are recorded as links, not followed)."""
    out: dict[str, str] = {}
    with h5py.File(path, "r", locking=False) as f:

        def walk(group: h5py.Group, prefix: str) -> None:
            out[prefix or "/"] = "group " + _attrs_digest(group)
            for name in group:
                full = f"{prefix}/{name}"
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.SoftLink):
                    out[full] = f"soft {link.path}"
                elif isinstance(link, h5py.ExternalLink):
                    out[full] = f"external {link.filename} {link.path}"
                elif isinstance(obj := group[name], h5py.Group):
                    walk(obj, full)
                else:
                    sources = (
                        [(s.file_name, s.dset_name) for s in obj.virtual_sources()]
                        if obj.is_virtual
                        else []
                    )
                    out[full] = f"dataset {sources} {_value_digest(obj[()])} " + _attrs_digest(obj)

        walk(f, "")
    return out


def _versions(http: httpx.Client, rel: str) -> dict[str, Any]:
    """The answer to the version list of the file's default mask and partition groups."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        r = http.get(f"/v1/{kind}/versions", params={"file_path": rel})
        body = r.json()
        # A refused list is compared by its status and error class (its text names the request).
        out[kind] = (r.status_code, body if r.status_code == 200 else body.get("error"))
    return out


def _rewritten(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Version records present before and different (or gone) after."""
    n = 0
    for kind in KINDS:
        was, now = before[kind][1], after[kind][1]
        if not isinstance(was, list):
            continue
        now_by = {v["version"]: v for v in now} if isinstance(now, list) else {}
        n += sum(1 for v in was if now_by.get(v["version"]) != v)
    return n


# ---------------------------------------------------------------- hostile write targets


@dataclass
class Case:
    """One hostile write: ``kind`` posted to ``group`` of ``main``; ``linked`` are the other
    files the write could reach."""

    name: str
    kind: str
    group: str | None
    main: Path
    linked: list[Path] = field(default_factory=list)
    want: int | None = None  # a specific status, else any 4xx


def _versioned(api: RemoteHDF5Facade, root: Path, path: Path) -> Path:
    """A native result file with two mask versions and one partition version."""
    write_native_file(path, SPEC)
    rel = path.relative_to(root).as_posix()
    for rows in (1, 2):
        api.write_mask(rel, MaskSchema(mask=_mask(rows), metadata=geometry(SHAPE)))
    api.write_partition(rel, _partition())
    return path


def _cases(api: RemoteHDF5Facade, root: Path, outside: Path) -> list[Case]:
    cases: list[Case] = []

    def one(name: str) -> Path:
        return _versioned(api, root, root / name / "run.hdf5")

    for kind in KINDS:
        for group in (f"/simplemask/{kind}/versions/v000001", f"/simplemask/{kind}/versions"):
            folder = root / f"store-{kind}-{group.count('/')}"
            folder.mkdir()
            cases.append(Case(f"{kind} into {group}", kind, group, one(folder.name)))
        for group in ("/xpcs", "/xpcs/qmap", "/simplemask", "/"):
            folder = root / f"own-{kind}-{len(cases)}"
            folder.mkdir()
            cases.append(Case(f"{kind} over {group}", kind, group, one(folder.name)))
    (root / "cross").mkdir()
    cross = one("cross")
    cases.append(Case("mask into the partition group", "mask", "/simplemask/partition", cross))
    cases.append(Case("partition into the mask group", "partition", "/simplemask/mask", cross))

    # External links to a file inside the root that holds versions.
    (root / "ext-in").mkdir()
    other = _versioned(api, root, root / "ext-in" / "other.hdf5")
    main = write_native_file(root / "ext-in" / "main.hdf5", SPEC)
    with h5py.File(main, "a") as f:
        f["/simplemask"] = h5py.ExternalLink("other.hdf5", "/simplemask")
        f["/theirs"] = h5py.ExternalLink("other.hdf5", "/simplemask/mask")
    for kind in KINDS:
        cases.append(Case(f"{kind} through an external link inside the root", kind, None, main))
        cases[-1].linked.append(other)
    cases.append(Case("mask into an external link's group", "mask", "/theirs", main, [other]))

    # An external link to a file outside the root.
    victim = write_native_file(outside / "victim.hdf5", SPEC)
    with h5py.File(victim, "a") as f:
        f.create_group("/simplemask/mask")
        f.create_group("/simplemask/partition")
    (root / "ext-out").mkdir()
    leaving = write_native_file(root / "ext-out" / "main.hdf5", SPEC)
    with h5py.File(leaving, "a") as f:
        f["/simplemask"] = h5py.ExternalLink(str(victim), "/simplemask")
    for kind in KINDS:
        name = f"{kind} through an external link out of the root"
        cases.append(Case(name, kind, None, leaving, [victim], want=403))

    # Soft links: a component, an alias of a versioned group, a member leaving the group.
    (root / "soft").mkdir()
    soft = one("soft")
    with h5py.File(soft, "a") as f:
        f["/alias"] = h5py.SoftLink("/simplemask/mask")
        f.create_group("/masks/a")
        f["/masks/a/mask"] = h5py.SoftLink("/xpcs/qmap/dqmap")
    (root / "soft-top").mkdir()
    soft_top = write_native_file(root / "soft-top" / "run.hdf5", SPEC)
    with h5py.File(soft_top, "a") as f:
        f["/simplemask"] = h5py.SoftLink("/xpcs")
    cases.append(Case("mask through a soft-linked /simplemask", "mask", None, soft_top))
    cases.append(Case("mask into a soft-link alias of the mask group", "mask", "/alias", soft))
    cases.append(Case("mask into a group whose member is a soft link", "mask", "/masks/a", soft))

    # Virtual datasets: the found mask a virtual view of a file outside / inside the root.
    (root / "vds").mkdir()
    for where, src_dir in (("outside", outside), ("inside", root / "vds")):
        src_dir.mkdir(exist_ok=True)
        source = src_dir / f"source-{where}.hdf5"
        with h5py.File(source, "w") as f:
            f["m"] = np.ones(SHAPE, np.uint8)
        path = root / "vds" / f"{where}.hdf5"
        layout = h5py.VirtualLayout(shape=SHAPE, dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(source), "m", shape=SHAPE)
        with h5py.File(path, "w") as f:
            g = f.create_group("/simplemask/mask")
            g.create_virtual_dataset("mask", layout)
            g.create_group("metadata")
        want = 403 if where == "outside" else None
        name = f"mask over a virtual dataset with its source {where} the root"
        cases.append(Case(name, "mask", None, path, [source], want=want))
    return cases


def test_hostile_write_targets_change_nothing(tmp_path: Path) -> None:
    fig = Figure("S3", "write-targets", "Writes aimed at stored versions, data and links")
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    refused = changed = rewritten = server_errors = compared = 0
    statuses: dict[str, int] = {}
    failures: list[str] = []
    with serving(root, tmp_path / "server.log") as srv:
        with RemoteHDF5Facade(srv.url) as api:
            cases = _cases(api, root, outside)
        with httpx.Client(base_url=srv.url, timeout=60, headers=MSGPACK) as http:
            for case in cases:
                files = [case.main, *case.linked]
                rel = case.main.relative_to(root).as_posix()
                before = [tree(p) for p in files]
                compared += sum(len(t) for t in before)
                listed = _versions(http, rel)
                params = {"file_path": rel} | ({"group": case.group} if case.group else {})
                r = http.post(f"/v1/{case.kind}", params=params, content=_body(case.kind))
                after = [tree(p) for p in files]
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                server_errors += int(r.status_code >= 500)
                ok = 400 <= r.status_code < 500 and r.status_code == (case.want or r.status_code)
                refused += int(ok)
                n_changed = sum(
                    len(set(a.items()) ^ set(b.items())) for a, b in zip(before, after, strict=True)
                )
                n_rewritten = _rewritten(listed, _versions(http, rel))
                changed += n_changed
                rewritten += n_rewritten
                if not ok or n_changed or n_rewritten:
                    failures.append(f"{case.name}: {r.status_code} {r.text[:160]}")
                if listed != _versions(http, rel):
                    failures.append(f"{case.name}: version list changed")
        server_errors = max(server_errors, server_5xx(srv.url))
    fig["cases"] = len(cases)
    fig["refused_4xx"] = refused
    fig["statuses"] = statuses
    fig["objects_compared"] = compared
    fig["objects_changed"] = changed
    fig["versions_rewritten"] = rewritten
    fig["server_5xx"] = server_errors
    fig.notes += failures
    fig.target("cases refused with a 4xx", refused, f"{len(cases)}", refused == len(cases))
    fig.target("datasets, attributes and links changed", changed, "0", changed == 0)
    fig.target("versions rewritten", rewritten, "0", rewritten == 0)
    fig.target("5xx answers", server_errors, "0", server_errors == 0)
    fig.target("cases with a failure", len(failures), "0", not failures)
    fig.check()


# ---------------------------------------------------------------- resends


def _dropped_send(port: int, rel: str, key: str, body: bytes) -> None:
    """Send a whole keyed write on a raw connection and close it before reading."""
    head = (
        f"POST /v1/mask?file_path={rel} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/msgpack\r\n"
        "Accept: application/json\r\n"
        f"Idempotency-Key: {key}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)


def _keyed_post(url: str, rel: str, key: str, body: bytes) -> int | str:
    """POST a keyed mask write on a connection of its own: the version, or the error text."""
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post(
            "/v1/mask",
            params={"file_path": rel},
            content=body,
            headers={**MSGPACK, "Idempotency-Key": key},
        )
    if r.status_code == 201:
        version: int = r.json()["version"]
        return version
    return f"{r.status_code} {r.text[:200]}"


def _send_one_key(
    url: str, port: int, rel: str, key: str, body: bytes, n_senders: int
) -> list[int | str]:
    """``n_senders`` threads and one dropped connection send the same keyed write at once;
    then one more resend: every answer (version, or error text)."""
    got: list[int | str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_senders + 1)

    def send() -> None:
        barrier.wait()
        answer = _keyed_post(url, rel, key, body)
        with lock:
            got.append(answer)

    def drop() -> None:
        barrier.wait()
        _dropped_send(port, rel, key, body)

    threads = [threading.Thread(target=send) for _ in range(n_senders)]
    threads.append(threading.Thread(target=drop))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got.append(_keyed_post(url, rel, key, body))  # the resend after the dropped answer
    return got


def test_concurrent_and_dropped_resends_store_one_version(tmp_path: Path) -> None:
    n_keys, n_senders = scale(10, 40), scale(8, 16)
    fig = Figure("S3", "resends", "The same keyed write sent at once and after a dropped answer")
    root = tmp_path / "root"
    root.mkdir()
    write_native_file(root / "resend.hdf5", SPEC)
    rel = "resend.hdf5"
    sent = 0
    answers: dict[str, list[int | str]] = {}
    with serving(root, tmp_path / "server.log") as srv:
        for k in range(n_keys):
            key, body = f"resend-{k:03d}", mask_body(_mask(k % 16 + 1), f"key {k}")
            answers[key] = _send_one_key(srv.url, port_of(srv), rel, key, body, n_senders)
            sent += n_senders + 2
        with RemoteHDF5Facade(srv.url) as api:
            versions = api.list_mask_versions(rel)
        server_errors = server_5xx(srv.url)
    stored_keys = [v["idempotency_key"] for v in versions]
    by_key = {v["idempotency_key"]: v["version"] for v in versions}
    split = [k for k, got in answers.items() if len(set(got)) != 1]
    wrong = [k for k, got in answers.items() if by_key.get(k) not in got]
    duplicates = len(stored_keys) - len(set(stored_keys))
    fig["requests_sent"] = sent
    fig["keys"] = n_keys
    fig["senders_per_key"] = n_senders
    fig["dropped_connections"] = n_keys
    fig["versions_stored"] = len(versions)
    fig["duplicates"] = duplicates
    fig["server_5xx"] = server_errors
    fig.notes += [f"{k}: {answers[k]}" for k in sorted(set(split) | set(wrong))][:10]
    fig.target("versions stored", len(versions), f"{n_keys}", len(versions) == n_keys)
    fig.target("duplicate versions", duplicates, "0", duplicates == 0)
    fig.target("keys answered with more than one version", len(split), "0", not split)
    fig.target("keys answered with a version not stored for them", len(wrong), "0", not wrong)
    fig.target("5xx answers", server_errors, "0", server_errors == 0)
    fig.check()


# ---------------------------------------------------------------- found data


def _found_arrays() -> dict[str, npt.NDArray[Any]]:
    mask = np.ones(FOUND_SHAPE, dtype=np.int32)
    mask[10:20, 5:9] = 0
    labels = np.arange(FOUND_SHAPE[0] * FOUND_SHAPE[1]).reshape(FOUND_SHAPE) % 4 + 1
    pmap = (labels * mask).astype(np.int32)
    return {"mask": mask, "partition_map": pmap}


def _new_write(api: RemoteHDF5Facade, rel: str, i: int) -> None:
    meta = GeometryMetadata(shape=FOUND_SHAPE, **GEO)
    if i % 2 == 0:
        m = np.ones(FOUND_SHAPE, np.uint8)
        m[: i + 1] = 0
        api.write_mask(rel, MaskSchema(mask=m, metadata=meta, description=f"write {i}"))
    else:
        pmap = np.full(FOUND_SHAPE, 2, np.uint16)
        pmap[:, : i + 1] = 1
        n1 = FOUND_SHAPE[0] * (i + 1)
        api.write_partition(
            rel,
            PartitionSchema(
                partition_map=pmap,
                num_pts=2,
                val_list=np.array([0.01, 0.02]),
                num_list=np.array([n1, pmap.size - n1]),
                metadata=meta,
            ),
        )


def test_found_masks_and_partitions_are_kept(tmp_path: Path) -> None:
    n_writes = scale(5, 25)
    fig = Figure("S3", "found-kept", "Masks and partitions of the reference facade kept by writes")
    root = tmp_path / "root"
    root.mkdir()
    path = root / "found.hdf5"
    found = _found_arrays()
    reference_write_mask(path, found["mask"], "beamstop")
    reference_write_partition(path, found["partition_map"])
    want = {
        "mask": sha256_of(found["mask"]),
        "partition_map": sha256_of(found["partition_map"]),
        "partition.mask": sha256_of((found["partition_map"] > 0).astype(np.int32)),
        "val_list": sha256_of(np.array([0.001, 0.002, 0.003, 0.004])),
    }
    reads: dict[str, Callable[[RemoteHDF5Facade], npt.NDArray[Any]]] = {
        "mask": lambda api: api.read_mask("found.hdf5", version=1).mask,
        "partition_map": lambda api: api.read_partition("found.hdf5", version=1).partition_map,
        "partition.mask": lambda api: np.asarray(api.read_partition("found.hdf5", version=1).mask),
        "val_list": lambda api: api.read_partition("found.hdf5", version=1).val_list,
    }
    kept = total = 0
    lost: list[str] = []
    with serving(root, tmp_path / "server.log") as srv, RemoteHDF5Facade(srv.url) as api:
        for i in range(n_writes):
            _new_write(api, "found.hdf5", i)
            for name, read in reads.items():
                total += 1
                try:
                    same = sha256_of(read(api)) == want[name]
                except Exception as exc:  # a read that fails is data lost, recorded as such
                    same = False
                    lost.append(f"write {i}: {name}: {type(exc).__name__}: {exc}")
                kept += int(same)
                if not same and len(lost) < 10:
                    lost.append(f"write {i}: {name} differs")
        masks = api.list_mask_versions("found.hdf5")
        partitions = api.list_partition_versions("found.hdf5")
        server_errors = server_5xx(srv.url)
    origins = [masks[0]["origin"], partitions[0]["origin"]]
    stored = len(masks) + len(partitions)
    fig["writes"] = n_writes
    fig["found_arrays_kept"] = f"{kept}/{total}"
    fig["versions_listed"] = stored
    fig["server_5xx"] = server_errors
    fig.notes += lost[:10]
    fig.target("found arrays kept as version 1", f"{kept}/{total}", "all", kept == total)
    fig.target("version 1 listed as found", origins, "found, found", origins == ["found"] * 2)
    fig.target("versions listed", stored, f"{n_writes + 2}", stored == n_writes + 2)
    fig.target("5xx answers", server_errors, "0", server_errors == 0)
    fig.check()
