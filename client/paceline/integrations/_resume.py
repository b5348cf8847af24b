"""What a trainer checkpoint must agree on with the curriculum it resumes.

A checkpoint holds a position in a Paceline run (the next step to draw). Resumed against
another curriculum, a recreated one, one with another spec, or under another run id, that
position means nothing: the steps would fetch other batches and the reports would land
in the wrong log. So every integration writes a `Fingerprint` with its sampler state and
checks it when the state is loaded, before any batch is drawn or report sent, and checks
the dataset against the layout when the trainer is built. Pure Python.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from paceline.client import Curriculum, Run

__all__ = ["Fingerprint", "check_dataset_size", "spec_digest"]


def spec_digest(spec: Mapping[str, Any]) -> str:
    """A short digest of a canonical spec (equal specs, equal digests)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """Which curriculum and run a checkpoint's Paceline position belongs to."""

    curriculum: str
    spec_digest: str
    created_at: str
    run_id: str

    @classmethod
    def of(cls, run: Run) -> Fingerprint:
        info = run.curriculum.info
        return cls(curriculum=info.name, spec_digest=spec_digest(info.spec),
                   created_at=info.created_at.isoformat(), run_id=run.run_id)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint | None:
        """The fingerprint saved in `data`; None for state saved without one."""
        if not all(key in data for key in ("curriculum", "spec_digest", "run_id")):
            return None
        return cls(curriculum=str(data["curriculum"]), spec_digest=str(data["spec_digest"]),
                   created_at=str(data.get("created_at", "")), run_id=str(data["run_id"]))

    def check(self, run: Run, where: str) -> None:
        """Raise ValueError naming the first mismatch between this checkpoint's
        fingerprint and `run` (the run the trainer resumes with)."""
        now = Fingerprint.of(run)
        if self.curriculum != now.curriculum:
            raise ValueError(
                f"{where}: the checkpoint belongs to curriculum {self.curriculum!r}, the "
                f"trainer runs curriculum {now.curriculum!r}; resume against the curriculum "
                "it was trained with")
        if self.spec_digest != now.spec_digest:
            raise ValueError(
                f"{where}: the checkpoint was written for another spec of curriculum "
                f"{self.curriculum!r} (spec digest {self.spec_digest}, now "
                f"{now.spec_digest}); its step position does not carry over")
        if self.created_at and self.created_at != now.created_at:
            raise ValueError(
                f"{where}: curriculum {self.curriculum!r} was recreated since the checkpoint "
                f"(created {self.created_at}, now {now.created_at}); its log is not the one "
                "the checkpoint's steps were reported to")
        if self.run_id != now.run_id:
            raise ValueError(
                f"{where}: the checkpoint is run {self.run_id!r}, the trainer resumes as run "
                f"{now.run_id!r}; pass run_id={self.run_id!r} to resume it (a new run id "
                "starts a new run, at step 0)")


def check_dataset_size(size: int, curriculum: Curriculum, where: str) -> None:
    """Row i of the trainer's dataset must be Paceline's sample i: refuse a dataset whose
    length differs from the layout's, naming both."""
    expected = curriculum.info.num_samples
    if size != expected:
        raise ValueError(
            f"{where}: the dataset has {size} rows but curriculum {curriculum.name!r} lays "
            f"out {expected} samples ({', '.join(curriculum.distributions)}); row i must be "
            "Paceline's global sample i, so the dataset must have exactly one row per "
            "sample of the layout")
