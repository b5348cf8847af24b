"""Domain validation: every malformed input raises a stable error code with a clear
message."""

from __future__ import annotations

import numpy as np
import pytest

from paceline_server.domain import (
    CurriculumSpec,
    DatasetLayout,
    IndexOutOfRange,
    InvalidReport,
    InvalidSpec,
    ObjectiveSpec,
    Report,
    StrategySpec,
    ZeroVarianceSpec,
)
from support import layout, spec


def base_spec(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "math",
        "layout": {"distributions": [{"name": "easy", "size": 10}, {"name": "hard", "size": 5}]},
        "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
        "batch_size": 4,
    }
    data.update(changes)
    return data


class TestLayout:
    def test_sizes_give_contiguous_ranges(self) -> None:
        lay = layout(3, 2)
        assert lay.num_samples == 5
        assert lay.distribution_of(np.array([0, 2, 3, 4])).tolist() == [0, 0, 1, 1]
        assert lay.members(1, np.array([0, 1])).tolist() == [3, 4]

    def test_labels_keep_members_sorted(self) -> None:
        lay = DatasetLayout.from_labels([1, 0, 1, 0, 1], ["a", "b"])
        assert lay.sizes.tolist() == [2, 3]
        assert lay.members(0, np.array([0, 1])).tolist() == [1, 3]
        assert lay.members(1, np.array([0, 1, 2])).tolist() == [0, 2, 4]
        assert lay.distribution_of(np.array([4, 3])).tolist() == [1, 0]
        assert lay.labels is not None and lay.labels.dtype == np.uint8

    def test_draw_is_unique_inside_a_large_distribution(self) -> None:
        lay = layout(1000, 10)
        drawn = lay.draw(0, 500, np.random.default_rng(1))
        assert np.unique(drawn).size == 500
        assert drawn.max() < 1000

    def test_draw_repeats_only_when_slots_exceed_size(self) -> None:
        lay = layout(10, 3)
        drawn = lay.draw(1, 7, np.random.default_rng(0))
        assert set(drawn.tolist()) <= {10, 11, 12}

    @pytest.mark.parametrize(
        ("distributions", "fragment"),
        [
            ([], "at least one distribution"),
            ([("a", 0)], "size of distribution 'a'"),
            ([("a", 3), ("a", 4)], "duplicate"),
            ([("bad name!", 3)], "distribution name"),
            ([("a", 2.5)], "size of distribution"),
        ],
    )
    def test_bad_sizes(self, distributions: list[tuple[str, int]], fragment: str) -> None:
        with pytest.raises(InvalidSpec, match=fragment) as info:
            DatasetLayout.from_sizes(distributions)
        assert info.value.code == "INVALID_SPEC"

    def test_empty_distribution_in_labels(self) -> None:
        with pytest.raises(InvalidSpec, match="without samples: \\['b'\\]"):
            DatasetLayout.from_labels([0, 0, 2], ["a", "b", "c"])

    @pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0.5, 1.0], [], [0, True, 1],
                                        [0, "1"], [0, None]])
    def test_bad_labels(self, labels: list[float]) -> None:
        with pytest.raises(InvalidSpec):
            DatasetLayout.from_labels(labels, ["a", "b"])

    def test_out_of_range_indices(self) -> None:
        with pytest.raises(IndexOutOfRange, match="\\[0, 14\\]") as info:
            layout(10, 5).check_indices(np.array([3, 15, -1]))
        assert info.value.code == "INDEX_OUT_OF_RANGE"
        assert info.value.details["bad"] == [15, -1]

    def test_equality_and_round_trip(self) -> None:
        lay = DatasetLayout.from_labels([1, 0, 1], ["a", "b"])
        from paceline_server.domain.spec import parse_layout

        assert parse_layout(lay.to_dict()) == lay
        assert parse_layout(layout(2, 3).to_dict()) == layout(2, 3)
        assert lay != layout(1, 2)


class TestSpec:
    def test_round_trip(self) -> None:
        parsed = CurriculumSpec.from_dict(base_spec(sampler={"kind": "uniform"}, seed=7))
        again = CurriculumSpec.from_dict(parsed.to_dict())
        assert again.to_dict() == parsed.to_dict()
        assert parsed.objectives[1] == ObjectiveSpec("len", "minimize", None, (0.0, 100.0))
        assert parsed.primary_index == 0

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            ({"objectives": []}, "at least one objective"),
            ({"objectives": ["a", "a"]}, "duplicate"),
            ({"objectives": [{"name": "a", "direction": "up"}]}, "direction"),
            ({"objectives": [{"name": "a", "bounds": [1, 1]}]}, "low < high"),
            ({"objectives": [{"name": "a", "bounds": [0, float("nan")]}]}, "finite"),
            ({"objectives": [{"name": "a", "color": "red"}]}, "unknown objective fields"),
            ({"batch_size": 0}, "batch_size"),
            ({"batch_size": 16}, "exceeds the dataset size 15"),
            ({"seed": -1}, "seed"),
            ({"primary_objective": "nope"}, "primary_objective"),
            ({"colour": 1}, "unknown curriculum fields"),
            ({"name": ""}, "curriculum name"),
            ({"sampler": 3}, "sampler must be a name"),
            ({"zero_variance": {"threshold": 0}}, "threshold"),
            ({"zero_variance": {"foo": 1}}, "unknown zero_variance"),
        ],
    )
    def test_rejects(self, changes: dict[str, object], fragment: str) -> None:
        with pytest.raises(InvalidSpec, match=fragment):
            CurriculumSpec.from_dict(base_spec(**changes))

    def test_strategy_spec_forms(self) -> None:
        assert StrategySpec.parse("dump_ucb", "sampler") == StrategySpec("dump_ucb")
        inline = StrategySpec.parse({"kind": "dump_ucb", "c": 2.0}, "sampler")
        nested = StrategySpec.parse({"kind": "dump_ucb", "params": {"c": 2.0}}, "sampler")
        assert inline == nested
        with pytest.raises(InvalidSpec, match="either inline or under 'params'"):
            StrategySpec.parse({"kind": "x", "params": {}, "c": 1}, "sampler")

    def test_zero_variance_forms(self) -> None:
        assert ZeroVarianceSpec.parse(True) == ZeroVarianceSpec()
        assert ZeroVarianceSpec.parse(None) is None
        assert ZeroVarianceSpec.parse({"threshold": 0.5}) == ZeroVarianceSpec(threshold=0.5)


class TestReport:
    def test_dense_flattens_groups(self) -> None:
        cur = spec((10, 5), ("acc", "len"))
        rewards = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
        rep = Report.dense(run_id="r", step=1, indices=[4, 12], rewards=rewards,
                           layout=cur.layout, num_objectives=2)
        assert rep.group_of.tolist() == [0, 0, 0, 1, 1, 1]
        assert rep.rewards.shape == (6, 2)
        assert rep.num_groups == 2

    def test_flat_groups_ragged_rows(self) -> None:
        cur = spec((10, 5))
        rep = Report.flat(run_id="r", step=0, rollout_indices=[7, 3, 7, 3, 3],
                          rewards=[1, 0, 0, 1, 1], layout=cur.layout, num_objectives=1)
        assert rep.indices.tolist() == [7, 3]
        assert rep.group_of.tolist() == [0, 0, 1, 1, 1]
        assert rep.rewards[:, 0].tolist() == [1, 0, 0, 1, 1]

    def test_flat_with_group_ids_allows_repeated_index(self) -> None:
        cur = spec((10, 5))
        rep = Report.flat(run_id="r", step=0, rollout_indices=[2, 2, 2, 2],
                          group_ids=[0, 1, 0, 1], rewards=[1, 0, 1, 0],
                          layout=cur.layout, num_objectives=1)
        assert rep.indices.tolist() == [2, 2]
        assert rep.rewards[:, 0].tolist() == [1, 1, 0, 0]

    @pytest.mark.parametrize(
        ("kwargs", "error", "fragment"),
        [
            ({"rewards": [[[1.0, float("nan")]]]}, InvalidReport, "NaN/inf"),
            ({"rewards": [[[1.0, float("inf")]]]}, InvalidReport, "1 NaN/inf"),
            ({"rewards": [[[1.0]]]}, InvalidReport, "one column per objective"),
            ({"indices": [99]}, IndexOutOfRange, "sample indices"),
            ({"indices": [1, 2]}, InvalidReport, "has 1 groups but indices has 2"),
            ({"indices": [1.5]}, InvalidReport, "integers"),
            ({"indices": "abc"}, InvalidReport, "integers"),
            # numbers only: numpy read "1" as 1.0 and True as 1, and the report was folded
            ({"rewards": [[["1", 2.0]]]}, InvalidReport, "rewards must be an array of "
             "numbers; found string"),
            ({"rewards": [[[None, 2.0]]]}, InvalidReport, "found null"),
            ({"advantages": [["0.5"]]}, InvalidReport, "advantages .* found string"),
            ({"grad_products": [["1", 0], [0, 1]]}, InvalidReport, "grad_products"),
            ({"eval_objectives": [0.5, "1"]}, InvalidReport, "eval_objectives"),
            ({"indices": [True]}, InvalidReport, "integers; found boolean"),
            ({"indices": [1, True], "rewards": [[[1.0, 2.0]]] * 2}, InvalidReport,
             "found boolean"),
            ({"indices": [1.0, True], "rewards": [[[1.0, 2.0]]] * 2}, InvalidReport,
             "found boolean"),
            ({"rewards": np.array([[["1", "2"]]])}, InvalidReport, "found string"),
            ({"rewards": [[[1.0, 2.0]], [[1.0]]], "indices": [1, 2]}, InvalidReport,
             "rectangular"),
            ({"advantages": [[1.0, 2.0]]}, InvalidReport, "advantages must have shape"),
            ({"grad_products": [[1.0]]}, InvalidReport, "2x2"),
            ({"eval_objectives": [1.0]}, InvalidReport, "one value per objective"),
            ({"run_id": ""}, InvalidReport, "run_id"),
            ({"step": -1}, InvalidReport, "step"),
            # groups without a rollout: once a 500 from the samplers' group sums
            ({"rewards": np.zeros((1, 0, 2))}, InvalidReport, "at least one rollout"),
            ({"indices": [1, 2], "rewards": np.zeros((2, 0, 2))}, InvalidReport,
             "at least one rollout"),
        ],
    )
    def test_rejects(self, kwargs: dict[str, object], error: type[Exception],
                     fragment: str) -> None:
        cur = spec((10, 5), ("acc", "len"))
        args: dict[str, object] = {"run_id": "r", "step": 0, "indices": [1],
                                   "rewards": [[[1.0, 2.0]]]}
        args.update(kwargs)
        with pytest.raises(error, match=fragment):
            Report.dense(layout=cur.layout, num_objectives=2, **args)  # type: ignore[arg-type]

    def test_numbers_of_every_kind_are_read(self) -> None:
        """What stays accepted beside the refusals above: integers, numpy scalars in
        lists, whole-float indices, and booleans as a report's values, listed (the
        README's loop sends pass/fail so) or as a numpy array (a typed array `"|b1"`)."""
        cur = spec((10, 5), ("acc", "len"))
        for rewards in ([[[1, 0]]], [[[np.float32(1.0), np.int8(0)]]], [[[True, False]]],
                        np.array([[[True, False]]])):
            rep = Report.dense(run_id="r", step=0, indices=[np.int64(1)], rewards=rewards,
                               layout=cur.layout, num_objectives=2)
            assert rep.rewards.dtype == np.float64 and rep.rewards.tolist() == [[1.0, 0.0]]
        rep = Report.dense(run_id="r", step=0, indices=[3.0], rewards=[[[1, 0]]],
                           layout=cur.layout, num_objectives=2)
        assert rep.indices.tolist() == [3]

    def test_flat_rows_of_one_group_must_agree(self) -> None:
        cur = spec((10, 5))
        with pytest.raises(InvalidReport, match="different sample indices"):
            Report.flat(run_id="r", step=0, rollout_indices=[1, 2], group_ids=[0, 0],
                        rewards=[1, 0], layout=cur.layout, num_objectives=1)

    def test_error_to_dict_is_stable(self) -> None:
        err = InvalidReport("bad", {"field": "x"})
        assert err.to_dict() == {"code": "INVALID_REPORT", "message": "bad",
                                 "details": {"field": "x"}}
