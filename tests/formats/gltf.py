"""A GLB reader of the tests' own, written from the glTF 2.0 specification (section 4.4, binary glTF; 3.6,
accessors): it follows the JSON's accessors and buffer views and assumes nothing of how our writer lays them
out, so it reads splat-transform's files as well as ours."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

_COMPONENTS = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


class Glb:
    """A GLB file parsed by the book (glTF 2.0, section 4.4): the JSON and each attribute of its only mesh
    primitive as an (N, width) array (normalized integers mapped to [0, 1] or [-1, 1])."""

    def __init__(self, data: bytes) -> None:
        magic, version, length = struct.unpack_from("<III", data, 0)
        assert (magic, version, length) == (0x46546C67, 2, len(data))
        json_length, json_type = struct.unpack_from("<II", data, 12)
        assert json_type == 0x4E4F534A and json_length % 4 == 0
        self.json: dict[str, Any] = json.loads(data[20:20 + json_length])
        self.bin = b""
        if 20 + json_length < len(data):
            bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
            assert bin_type == 0x004E4942 and 28 + json_length + bin_length == len(data)
            self.bin = data[28 + json_length:]

    def accessor(self, index: int) -> np.ndarray:
        accessor = self.json["accessors"][index]
        view = self.json["bufferViews"][accessor["bufferView"]]
        dtype = np.dtype(_COMPONENTS[accessor["componentType"]])
        width = _WIDTHS[accessor["type"]]
        stride = view.get("byteStride", dtype.itemsize * width)
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        count = accessor["count"]
        assert start + stride * (count - 1) + dtype.itemsize * width <= view.get("byteOffset", 0) + view["byteLength"]
        rows = np.ndarray((count, width), dtype=dtype, buffer=self.bin, offset=start, strides=(stride, dtype.itemsize))
        if accessor.get("normalized"):
            info = np.iinfo(dtype)
            return np.maximum(rows.astype(np.float64) / info.max, -1.0)
        return rows.copy()

    @property
    def primitive(self) -> dict[str, Any]:
        (mesh,) = self.json["meshes"]
        (primitive,) = mesh["primitives"]
        return primitive

    def attributes(self) -> dict[str, np.ndarray]:
        return {name: self.accessor(index) for name, index in self.primitive["attributes"].items()}

    def accessor_kinds(self) -> dict[str, tuple[str, int, bool]]:
        """Per attribute: its accessor's (type, componentType, normalized)."""
        accessors = self.json["accessors"]
        return {name: (accessors[i]["type"], accessors[i]["componentType"], accessors[i].get("normalized", False))
                for name, i in self.primitive["attributes"].items()}
