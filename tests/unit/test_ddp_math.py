"""Several ranks train as one process would: each rank's share of every batch, and 2 gloo ranks with
SyncBatchNorm against one process at the global batch."""

from __future__ import annotations

import sys

import pytest
import torch

from cifar_pipeline.core.config import AugmentParams
from cifar_pipeline.engine.loader import DeviceData, Loader
from helpers import ddp_steps
from helpers.processes import run
from helpers.project import ROOT

# Float32 sums in another order (the gradients of two halves, then their mean; BatchNorm's statistics from
# all-reduced sums) make the first epoch's loss agree to 1e-6. BatchNorm divides by the small spread of
# these one-colour images and amplifies that rounding as training goes on: after 6 SGD steps the weights
# were 1.3e-3 apart at most (run on 2026-12-07), and 6.5e-2 apart without SyncBatchNorm.
WEIGHT_ATOL = 5e-3


def loader(rank: int, world_size: int, n: int = 40) -> Loader:
    torch.manual_seed(0)
    data = DeviceData.from_numpy(
        torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8).numpy(),
        torch.arange(n).numpy() % 10,
        torch.zeros(2, 32, 32, 3, dtype=torch.uint8).numpy(),
        torch.zeros(2).long().numpy(),
        torch.device("cpu"),
    )
    generator = torch.Generator().manual_seed(0)
    return Loader(data, 16, AugmentParams(crop_padding=4, hflip=True), generator, lambda x: x, rank, world_size)


def test_the_ranks_shares_make_up_each_whole_batch_of_the_one_process_order():
    alone = list(loader(0, 1).epoch()[1])
    shares = [list(loader(rank, 2).epoch()[1]) for rank in (0, 1)]
    assert [x.shape[0] for x, _ in alone] == [16, 16, 8]  # alone, the last partial batch trains
    assert len(shares[0]) == len(shares[1]) == 2  # ranks drop it: each rank's share is 8 images
    for step, (x, y) in enumerate(alone[:2]):
        assert torch.equal(torch.cat([shares[0][step][0], shares[1][step][0]]), x)
        assert torch.equal(torch.cat([shares[0][step][1], shares[1][step][1]]), y)


def test_a_resumed_share_starts_where_the_epoch_stopped():
    ranked = loader(1, 2)
    start, batches = ranked.epoch()
    first = list(batches)
    _, rest = ranked.epoch(start, skip=1)
    assert torch.equal(next(rest)[0], first[1][0])


def two_ranks(out, sync_bn: bool) -> tuple[dict, list[dict]]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    run(
        [*torchrun, "--module", "helpers.ddp_steps", str(out), str(sync_bn).lower()],
        ROOT,
        PYTHONPATH=f"{ROOT / 'src'}:{ROOT / 'tests'}",
    )
    return torch.load(out, weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_ranks_with_sync_bn_train_as_one_process_at_the_global_batch(tmp_path):
    weights, results = ddp_steps.train(sync_bn=False)  # no process group: one process, batch 16
    synced, synced_results = two_ranks(tmp_path / "sync.pt", sync_bn=True)  # 2 ranks x 8, SyncBatchNorm
    apart, _ = two_ranks(tmp_path / "apart.pt", sync_bn=False)  # 2 ranks x 8, each rank's own statistics

    assert synced_results[0]["train_loss"] == pytest.approx(results[0]["train_loss"], rel=1e-6)
    assert synced_results[0]["val_loss"] == pytest.approx(results[0]["val_loss"], rel=1e-6)
    assert [r["val_acc"] for r in synced_results] == [r["val_acc"] for r in results]  # whole validation set
    assert max_difference(weights, synced) < WEIGHT_ATOL
    assert max_difference(weights, apart) > 5 * WEIGHT_ATOL  # the comparison can tell the difference
