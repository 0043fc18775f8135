"""``xpcs-io validate`` on files of every layout: it names the detected layout and checks
each group, two-time maps included (run as users run it, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from xpcs_io.tools.demo_aps8idi import write_pysimplemask_file
from xpcs_io.tools.demo_legacy8idi import write_boost_file, write_eigen_file


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xpcs_io.tools.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_legacy_file_every_group_and_two_time_map(tmp_path: Path) -> None:
    path, truth = write_eigen_file(tmp_path / "e.hdf")
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("layout aps8idi-legacy (detected)")
    for check in ("q-map", "G2", "geometry"):
        assert f"OK    {check} (aps8idi-legacy)" in r.stdout
    for k in range(len(truth.q_bins)):
        assert f"OK    two-time q_idx {k} " in r.stdout


def test_bad_two_time_map_fails(tmp_path: Path) -> None:
    path, _ = write_boost_file(tmp_path / "b_Twotime.hdf", twotime=True)
    with h5py.File(path, "a") as f:
        del f["/exchange/C2T_all/g2_00002"]
        f["/exchange/C2T_all/g2_00002"] = np.zeros((18, 17), np.float32)
    r = validate(path)
    assert r.returncode == 1
    assert "OK    two-time q_idx 1 " in r.stdout
    assert "FAIL  two-time q_idx 4 " in r.stdout
    assert "/exchange/C2T_all/g2_00002" in r.stdout
    assert "(18, 17)" in r.stdout
    assert "--    G2 (aps8idi-legacy)" in r.stdout  # a Twotime result has none


def test_pysimplemask_and_unknown_files(tmp_path: Path) -> None:
    r = validate(write_pysimplemask_file(tmp_path / "q.hdf", shape=(32, 40), n_q=3))
    assert r.returncode == 0, r.stdout
    assert "layout pysimplemask (detected)" in r.stdout
    assert "OK    q-map (pysimplemask)" in r.stdout
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    r = validate(other)
    assert r.returncode == 1
    assert "layout none" in r.stdout
    assert "no known layout; tried aps8idi-legacy" in r.stdout


def test_inspect_names_layout_and_plugin_filters(tmp_path: Path) -> None:
    import hdf5plugin

    path, truth = write_eigen_file(tmp_path / "e.hdf")
    with h5py.File(path, "a") as f:
        del f["/xpcs/dqmap"]
        f.create_dataset(
            "/xpcs/dqmap", data=truth.labels.astype(np.uint32), chunks=True, **hdf5plugin.Zstd()
        )
    r = subprocess.run(
        [sys.executable, "-m", "xpcs_io.tools.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "layout aps8idi-legacy" in r.stdout
    assert "dqmap  uint32 36x44 zstd" in r.stdout
    assert "g2_00001  float32 20x20 gzip" in r.stdout
