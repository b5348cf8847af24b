"""Trainer integrations: TRL (`paceline.integrations.trl`), verl
(`paceline.integrations.verl`, `.verl09`, `.verl_v1`), OpenRLHF (`paceline.integrations.openrlhf`)
and hand-written torch loops (`paceline.integrations.torch`).

Each module imports its framework when it is imported, and only then: `import paceline`
(and this package) needs nothing beyond httpx and pydantic. Install the frameworks with
`pip install 'paceline-client[integrations]'` (or bring your own versions; see
docs/integrations/ for the versions tested).
"""

from paceline.integrations._ledger import BatchLedger, Rollouts, StepRecord

__all__ = ["BatchLedger", "Rollouts", "StepRecord"]
