"""Shaping specs and reports: layouts, rewards by objective, flat reports, arrays."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import paceline
from paceline._payloads import (
    curriculum_spec,
    encode_body,
    json_bytes,
    plain,
    report_body,
    typed_array,
)

OBJECTIVES = ["acc", "len"]


class TestSpecs:
    @pytest.mark.parametrize("distributions", [
        [{"name": "a", "size": 3}, {"name": "b", "size": np.int64(2)}],
        [("a", 3), ("b", 2)],
        {"a": 3, "b": 2},
    ])
    def test_distribution_forms(self, distributions: Any) -> None:
        spec = curriculum_spec("c", distributions=distributions, objectives="acc")
        assert spec["layout"] == {"distributions": [{"name": "a", "size": 3},
                                                    {"name": "b", "size": 2}]}
        assert spec["objectives"] == ["acc"]
        assert "zero_variance" not in spec

    def test_labels(self) -> None:
        spec = curriculum_spec("c", labels=np.array([0, 1, 0]), names=["a", "b"],
                               objectives=["acc"], zero_variance=True)
        assert spec["layout"] == {"labels": [0, 1, 0], "names": ["a", "b"]}
        assert spec["zero_variance"] is True
        named = curriculum_spec("c", distributions=["a", "b"], labels=[0, 1], objectives=["acc"])
        assert named["layout"]["names"] == ["a", "b"]

    def test_missing_layout(self) -> None:
        with pytest.raises(paceline.InvalidInput, match="distributions"):
            curriculum_spec("c", objectives=["acc"])
        with pytest.raises(paceline.InvalidInput, match="names"):
            curriculum_spec("c", labels=[0], objectives=["acc"])
        with pytest.raises(paceline.InvalidInput, match="pair"):
            curriculum_spec("c", distributions=[("a", 1, 2)], objectives=["acc"])


class TestReports:
    def test_dense_arrays_go_as_typed_arrays(self) -> None:
        rewards = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
        body = report_body(run_id="r", step=np.int64(3), indices=np.array([4, 5]),
                           rewards=rewards, objectives=OBJECTIVES,
                           advantages=np.zeros((2, 3)), grad_products=np.eye(2),
                           eval_objectives={"acc": 1.0, "len": 2.0})
        assert body == {
            "run_id": "r", "step": 3,
            "indices": {"dtype": "<i8", "shape": [2], "data": np.array([4, 5]).tobytes()},
            "rewards": {"dtype": "<f4", "shape": [2, 3, 2], "data": rewards.tobytes()},
            "advantages": {"dtype": "<f8", "shape": [2, 3], "data": bytes(48)},
            "grad_products": {"dtype": "<f8", "shape": [2, 2], "data": np.eye(2).tobytes()},
            "eval_objectives": {"acc": 1.0, "len": 2.0}}
        assert type(body["step"]) is int

    def test_typed_arrays_from_tensors_and_fallbacks(self) -> None:
        torch = pytest.importorskip("torch")
        rewards = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2)
        assert typed_array(rewards) == {"dtype": "<f4", "shape": [1, 3, 2],
                                        "data": rewards.numpy().tobytes()}
        assert typed_array(torch.ones(2, dtype=torch.bfloat16)) is None  # numpy has none
        assert typed_array(np.arange(3).astype(">f8")) is None  # big-endian
        assert typed_array(np.array(["a"])) is None
        assert typed_array(np.float32(1.0)) is None and typed_array([1.0]) is None
        transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T  # not C-contiguous
        assert typed_array(transposed)["data"] == np.ascontiguousarray(transposed).tobytes()
        body = report_body(run_id="r", step=0, indices=[1], objectives=OBJECTIVES,
                           rewards=torch.ones(1, 2, 2, dtype=torch.bfloat16))
        assert body["rewards"] == [[[1.0, 1.0], [1.0, 1.0]]]  # sent as lists instead

    def test_json_carries_typed_bytes_as_base64(self) -> None:
        rewards = np.ones((1, 2, 2), dtype=np.float32)
        body = report_body(run_id="r", step=0, indices=np.array([1]), rewards=rewards,
                           objectives=OBJECTIVES)
        data, headers = encode_body(body, encoding="json", compress_over=None)
        sent = json.loads(data)
        assert base64.b64decode(sent["rewards"]["data"]) == rewards.tobytes()
        assert headers == {"Content-Type": "application/json"}
        big, headers = encode_body({**body, "rewards": typed_array(np.zeros((1, 2, 20_000)))},
                                   encoding="json")
        assert headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(big))["rewards"]["shape"] == [1, 2, 20_000]

    @pytest.mark.parametrize("body", [
        {"run_id": "r\u00e9\n\"x", "step": 3, "indices": typed_array(np.arange(4)),
         "rewards": typed_array(np.full((4, 2, 2), 0.5, dtype=np.float32)),
         "advantages": [[float("nan"), float("inf")], [-0.0, 1e300]],
         "eval_objectives": {"acc": 0.5, "l\u00e4nge": np.float64(1.0).item()},
         "dropped": [], "unserved": "accept", "nested": {"b": b"\x00\xff", "l": [b"a"]}},
        {"mixed keys": {1: "a", "b": None}, "empty": {}, "bytes": b""},
        [b"top", {"x": True}], "text", 7, None,
    ])
    def test_json_bytes_writes_what_json_dumps_writes(self, body: Any) -> None:
        """Writing typed arrays' base64 directly changes no byte of the body."""
        def default(value: Any) -> Any:
            assert isinstance(value, bytes)
            return base64.b64encode(value).decode("ascii")

        assert json_bytes(body) == json.dumps(body, separators=(",", ":"),
                                              default=default).encode()

    def test_base64_is_the_same_without_pybase64(self) -> None:
        """The client alone installs without pybase64: its fallback writes the same
        bytes (checked in a fresh interpreter where the import fails)."""
        body = {"rewards": typed_array(np.linspace(-1, 1, 999, dtype=np.float32)),
                "indices": typed_array(np.arange(7)), "empty": b"", "one": b"\xff"}
        script = (
            "import sys, json; sys.modules['pybase64'] = None\n"
            "import numpy as np\n"
            "import functools\n"
            "from paceline._payloads import json_bytes, typed_array, _b64encode\n"
            "assert isinstance(_b64encode, functools.partial)\n"
            "body = {'rewards': typed_array(np.linspace(-1, 1, 999, dtype=np.float32)),"
            " 'indices': typed_array(np.arange(7)), 'empty': b'', 'one': b'\\xff'}\n"
            "sys.stdout.buffer.write(json_bytes(body))\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              check=True)
        assert done.stdout == json_bytes(body)

    def test_rewards_by_objective_follow_the_objective_order(self) -> None:
        acc = np.array([[1.0, 0.0], [0.0, 0.0]])
        length = [[10, 20], [30, 40]]
        body = report_body(run_id="r", step=0, indices=[1, 2], objectives=OBJECTIVES,
                           rewards={"len": length, "acc": acc})
        assert body["rewards"] == np.stack([acc, np.array(length)], axis=-1).tolist()

    def test_rewards_by_objective_are_checked(self) -> None:
        with pytest.raises(paceline.InvalidInput, match="missing \\['len'\\]") as info:
            report_body(run_id="r", step=0, indices=[1], objectives=OBJECTIVES,
                        rewards={"acc": [[1.0]], "colour": [[1.0]]})
        assert info.value.details["unknown"] == ["colour"]
        assert info.value.status is None
        with pytest.raises(paceline.InvalidInput, match="same shape"):
            report_body(run_id="r", step=0, indices=[1], objectives=OBJECTIVES,
                        rewards={"acc": [[1.0, 0.0]], "len": [[1.0]]})

    def test_flat_form_with_group_ids(self) -> None:
        body = report_body(run_id="r", step=0, indices=[7, 7, 7, 9], group_ids=[0, 0, 0, 1],
                           rewards={"acc": [1, 0, 1, 1], "len": [5, 6, 7, 8]},
                           advantages=[0.5, -0.5, 0.5, 0.0], objectives=OBJECTIVES)
        assert body == {"run_id": "r", "step": 0, "rollout_indices": [7, 7, 7, 9],
                        "group_ids": [0, 0, 0, 1],
                        "rewards": [[1, 5], [0, 6], [1, 7], [1, 8]],
                        "advantages": [0.5, -0.5, 0.5, 0.0]}

    def test_plain(self) -> None:
        assert plain((np.float32(0.5), [np.int8(1)], {"a": np.zeros(1)})) == \
            [0.5, [1], {"a": [0.0]}]


class TestScalarize:
    def batch(self) -> paceline.Batch:
        return paceline.Batch(run_id="r", step=0, indices=[1, 2],
                              reward_weights={"acc": 0.75, "len": 0.25}, reward_scale=2.0)

    def test_lists_arrays_and_dicts_agree(self) -> None:
        batch = self.batch()
        rewards = [[[1.0, 4.0], [0.0, 8.0]], [[1.0, 0.0], [0.0, 0.0]]]
        expected = [[2 * (0.75 + 1.0), 2 * 2.0], [1.5, 0.0]]
        assert batch.scalarize(rewards) == expected
        assert batch.scalarize(np.array(rewards)).tolist() == expected
        by_objective = {"len": np.array(rewards)[..., 1], "acc": np.array(rewards)[..., 0]}
        assert batch.scalarize(by_objective).tolist() == expected
        assert batch.scalarize({"acc": 1.0, "len": 4.0}) == 3.5
        assert batch.scalarize([1.0, 4.0]) == 3.5
        assert batch.objectives == ["acc", "len"]
        assert batch.weight_vector == [0.75, 0.25]

    def test_objectives_to_minimize_count_negatively(self) -> None:
        # Default bounds [0, 1]: a minimised objective counts as 1 - r.
        batch = self.batch().model_copy(update={"minimize": ["len"]})
        rewards = np.array([[1.0, 4.0], [0.0, 8.0]])
        expected = [2 * (0.75 + 0.25 * (1 - 4.0)), 2 * 0.25 * (1 - 8.0)]
        assert batch.scalarize(rewards).tolist() == pytest.approx(expected)
        assert batch.scalarize({"acc": 1.0, "len": 4.0}) == pytest.approx(expected[0])
        assert batch.scalarize([1.0, 4.0]) == pytest.approx(expected[0])
        assert batch.weight_vector == [0.75, 0.25]  # the served weights stay as served

    def test_bounds_put_objectives_on_one_scale(self) -> None:
        # len minimised with bounds [0, 8]: u = (8 - len) / 8, so 4 -> 0.5 and 8 -> 0.
        batch = self.batch().model_copy(update={"minimize": ["len"],
                                                "bounds": {"len": (0.0, 8.0)}})
        rewards = np.array([[1.0, 4.0], [0.0, 8.0]])
        assert batch.scalarize(rewards).tolist() == pytest.approx([2 * (0.75 + 0.125), 0.0])
        assert batch.scalarize([[1.0, 4.0], [0.0, 8.0]]) == pytest.approx([1.75, 0.0])
        # Outside the bounds nothing is clipped: a longer answer is still worse.
        assert batch.scalarize([0.0, 16.0]) == pytest.approx(2 * 0.25 * -1.0)

    def test_wrong_shapes(self) -> None:
        batch = self.batch()
        with pytest.raises(ValueError, match="2 rewards"):
            batch.scalarize([1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match="objectives"):
            batch.scalarize(np.zeros((2, 3)))
        with pytest.raises(ValueError, match="lack"):
            batch.scalarize({"acc": 1.0})
