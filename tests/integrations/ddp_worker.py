"""One rank of the two-process DDP run of test_torch_distributed.py.

`python ddp_worker.py RANK WORLD INIT_METHOD SERVICE_URL OUT_JSON`: joins a gloo process
group, attaches the test's run over HTTP and trains a tiny DDP policy on its shard of
each step, three ways: `train_steps` with an even split, `train_steps` with
`drop_last` over an odd batch, and a `PacelineSampler` in a `StatefulDataLoader` that
pads an odd batch. Writes what it trained on and the acks it got to OUT_JSON; the test
compares them with what the service stored. Exits non-zero on the first failure.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import paceline
from paceline.integrations.torch import (
    PacelineSampler,
    group_advantages,
    train_steps,
    weighted_loss,
)

SAMPLES = 16
GROUP = 4


def prompt_rewards(indices: list[int]) -> np.ndarray:
    """[n, g, 2] rewards of the prompts alone, so the test can recompute them."""
    index = np.asarray(indices, dtype=float)[:, None]
    rollout = np.arange(GROUP, dtype=float)[None, :]
    return np.stack([(index * 3 + rollout) % 2, (index + 2 * rollout) % 4], axis=-1)


def main(rank: int, world: int, init_method: str, url: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    result = train(rank, world, url)
    with open(out, "w") as f:
        json.dump(result, f)
    # DDP's reducer holds the process group: collected first (it lived in `train`), the
    # group's gloo threads are joined by destroy_process_group rather than left to the
    # interpreter's exit, where a rank once aborted ("terminate called without an
    # active exception") in a loaded CI run.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train(rank: int, world: int, url: str) -> dict[str, Any]:
    """The three runs of this rank: what it trained on, its acks and final weights."""
    torch.manual_seed(0)
    policy = DistributedDataParallel(torch.nn.Embedding(SAMPLES, 1))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    trained: list[dict[str, Any]] = []

    def update(indices: torch.Tensor, advantages: torch.Tensor, loss_of: Any) -> None:
        rollouts = policy(indices).squeeze(-1)[:, None] * torch.arange(1.0, GROUP + 1)
        per_sample = -(rollouts * advantages).mean(dim=1)
        loss_of(per_sample).backward()
        optimizer.step()
        optimizer.zero_grad()

    with paceline.Client(url) as client:
        cur = client.curriculum("ddp")
        with cur.start_run(run_id="ddp", heartbeat_interval=None) as run:
            # An even split (4 prompts, 2 each), then drop_last over 5 (2 each, 1 left out).
            for size, start, drop_last in ((4, 0, False), (5, 10, True)):
                for step in train_steps(run, 3, start_step=start, size=size,
                                        drop_last=drop_last):
                    mine = step.local.indices
                    R = prompt_rewards(mine)
                    A = step.advantages(R)
                    update(step.indices, A, step.weighted_loss)
                    ack = step.report(R, A)
                    assert ack is not None
                    trained.append({"step": step.step, "indices": mine,
                                    "served": step.batch.indices,
                                    "advantages": A.tolist(), "seq": ack.seq})
            # A DataLoader over a padded split: 5 prompts, 3 per rank (rank 1 repeats the
            # batch's first), each step one loader batch of GROUP rollouts per prompt.
            from torchdata.stateful_dataloader import StatefulDataLoader

            sampler = PacelineSampler(run, batch_size=5, steps_per_epoch=2, start_step=20,
                                      mini_repeat_count=GROUP)
            assert (sampler.shard.num_replicas, sampler.shard.rank) == (world, rank)
            loader = StatefulDataLoader(list(range(SAMPLES)), batch_size=3 * GROUP,
                                        sampler=sampler)
            for rows in loader:
                batch = sampler.ledger.latest
                assert batch is not None
                mine = rows.tolist()[::GROUP]
                assert mine == sampler.local_batch(batch.step).indices
                R = prompt_rewards(mine)
                A = group_advantages(batch.scalarize(torch.as_tensor(R)))
                local = sampler.local_batch(batch.step)
                update(torch.tensor(mine), A, lambda losses, b=local: weighted_loss(losses, b))
                ack = sampler.report(batch.step, torch.as_tensor(R), A)
                assert ack is not None
                trained.append({"step": batch.step, "indices": mine,
                                "served": batch.indices, "advantages": A.tolist(),
                                "seq": ack.seq})
    weights = policy.module.weight.detach().flatten().tolist()
    return {"rank": rank, "trained": trained, "weights": weights}


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
