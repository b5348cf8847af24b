"""Deterministic `.npz` bytes without pickle.

`numpy.savez` stamps each member with the current time, so equal arrays could give
different bytes a second apart. Fixed member timestamps make equal content give equal
bytes, which idempotency checks and bit-exact state comparisons rely on.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import numpy as np

from paceline_server.domain.errors import StateCorrupt

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def load_npz(data: bytes, what: str = "payload") -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise StateCorrupt(f"cannot decode {what}: {exc}") from exc
