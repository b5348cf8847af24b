"""Generated protobuf messages of `paceline.v1` (see scripts/gen_proto.py)."""
