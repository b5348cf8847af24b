"""Paceline client: curriculum batches and reward weights for RL post-training.

```python
import paceline

client = paceline.Client("http://127.0.0.1:8000")        # or paceline.Client.embedded()
# paceline.Client("grpc://127.0.0.1:50051") speaks gRPC: same objects, retries, errors
cur = client.create_curriculum("math", distributions=[{"name": "easy", "size": 4000}],
                               objectives=["correctness"], exist_ok=True)
with cur.start_run() as run:
    batch = run.next_batch(0)
    run.report(0, indices=batch.indices, rewards=rewards)   # [n, g, k]
```
"""

from paceline._transport import RetryPolicy
from paceline.async_client import AsyncClient, AsyncCurriculum, AsyncRun
from paceline.client import Client, Curriculum, Run
from paceline.errors import (
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    PacelineError,
    TransportError,
    Unavailable,
)
from paceline.history import DistributionHistory, History
from paceline.models import (
    Batch,
    CurriculumInfo,
    DistributionStats,
    Health,
    ReportAck,
    RunInfo,
    State,
    StrategyCatalog,
    StrategyInfo,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncCurriculum",
    "AsyncRun",
    "AuthError",
    "Batch",
    "Client",
    "Conflict",
    "Curriculum",
    "CurriculumInfo",
    "DistributionHistory",
    "DistributionStats",
    "Health",
    "History",
    "InvalidInput",
    "NotFound",
    "PacelineError",
    "ReportAck",
    "RetryPolicy",
    "Run",
    "RunInfo",
    "State",
    "StrategyCatalog",
    "StrategyInfo",
    "TransportError",
    "Unavailable",
    "__version__",
]
