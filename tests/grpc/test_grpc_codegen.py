"""The checked-in protobuf code is what scripts/gen_proto.py makes of the .proto today,
and both copies (server and client) describe the same messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paceline import _grpc_pb2 as client_pb
from paceline_server.grpc.v1 import paceline_pb2 as server_pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_client_and_server_share_one_descriptor() -> None:
    assert client_pb.DESCRIPTOR.serialized_pb == server_pb.DESCRIPTOR.serialized_pb
    assert client_pb.DESCRIPTOR.package == "paceline.v1"
    assert client_pb.Batch is server_pb.Batch  # one pool, one class per message
