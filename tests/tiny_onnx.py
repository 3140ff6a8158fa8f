"""Tiny ONNX files with the interface of the real cutout models, written without the `onnx` package.

The venv has onnxruntime but not `onnx` (and torch.onnx.export needs it), so the few
protobuf messages a graph needs are encoded here by hand (field numbers from onnx.proto3).
The graph: mean over the colour channels -> (m - threshold) x gain -> sigmoid, so a dark
object on a light background comes out as foreground (gain < 0), at the input's size.
"""

from __future__ import annotations

import struct
from pathlib import Path

FLOAT = 1  # TensorProto.DataType


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 as two's complement
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(n)


def _bytes(field: int, data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return _key(field, 2) + _varint(len(data)) + data


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)  # TensorShapeProto.dim { dim_value }
    tensor_type = _int(1, FLOAT) + _bytes(2, dims)  # TypeProto.Tensor: elem_type, shape
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))  # ValueInfoProto: name, type{tensor_type}


def _scalar(name: str, value: float) -> bytes:
    return _int(2, FLOAT) + _bytes(8, name) + _bytes(9, struct.pack("<f", value))  # data_type, name, raw_data


def _node(op: str, inputs: list[str], outputs: list[str], attributes: bytes = b"") -> bytes:
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(4, op) + attributes)


def tiny_segmenter(path: Path, *, input_name: str, output_name: str, size: int, threshold: float,
                   gain: float) -> Path:
    """Write a (1, 3, size, size) float32 -> (1, 1, size, size) float32 segmenter to `path` (opset 13)."""
    axes = _bytes(5, _bytes(1, "axes") + _key(8, 0) + _varint(1) + _int(20, 7))  # AttributeProto ints=[1], INTS
    keep = _bytes(5, _bytes(1, "keepdims") + _int(3, 1) + _int(20, 2))  # i=1, INT
    nodes = [
        _node("ReduceMean", [input_name], ["m"], axes + keep),
        _node("Sub", ["m", "threshold"], ["d"]),
        _node("Mul", ["d", "gain"], ["z"]),
        _node("Sigmoid", ["z"], [output_name]),
    ]
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny")
             + _bytes(5, _scalar("threshold", threshold)) + _bytes(5, _scalar("gain", gain))
             + _bytes(11, _value_info(input_name, (1, 3, size, size)))
             + _bytes(12, _value_info(output_name, (1, 1, size, size))))
    model = _int(1, 7) + _bytes(2, "dam3d-tests") + _bytes(7, graph) + _bytes(8, _int(2, 13))  # ir 7, opset 13
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


def tiny_isnet(path: Path) -> Path:
    """ISNet's interface: `input` (1, 3, 1024, 1024) -> `output` (1, 1, 1024, 1024) in 0..1.

    Input is (x - 128) / 256: studio white (245) about 0.46, the red vase (190, 30, 30) about -0.17; threshold 0.3.
    """
    return tiny_segmenter(path, input_name="input", output_name="output", size=1024, threshold=0.3, gain=-30.0)


def tiny_u2net(path: Path) -> Path:
    """rembg u2net's interface: `input.1` (1, 3, 320, 320), first output (1, 1, 320, 320); rembg min-max scales it.

    rembg divides by the image max then ImageNet-normalises: white about 2.4, the red vase about -0.5.
    """
    return tiny_segmenter(path, input_name="input.1", output_name="1959", size=320, threshold=1.0, gain=-5.0)
