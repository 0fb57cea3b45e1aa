"""The training data loader: tokenised examples drawn by the cluster-aware sampler (one cluster per micro-step on
every rank), left-padded so that every target sits at the end of its row."""

from __future__ import annotations

import torch

from cgc.adapter.task_map import TaskMap
from cgc.data.sampler import ClusterAwareBatchSampler
from cgc.data.tokenization import MultiTaskCollator


def train_loader(
    train_set,
    task_map: TaskMap,
    pad_token_id: int,
    micro_batch_size: int,
    world: int,
    rank: int,
    seed: int,
    grad_accum: int,
    mixing: str,
    temperature: float,
    cluster_per: str,
    group_by_length: bool,
) -> tuple[torch.utils.data.DataLoader, ClusterAwareBatchSampler]:
    """-> (DataLoader, its sampler); `train_set` has the columns tokenize_dataset writes. Raises ValueError when no
    cluster can fill a step."""
    sampler = ClusterAwareBatchSampler(
        train_set["task_id"],
        task_map,
        micro_batch_size,
        world_size=world,
        rank=rank,
        seed=seed,
        mixing=mixing,
        temperature=temperature,
        cluster_per=cluster_per,
        grad_accum=grad_accum,
        lengths=[len(ids) for ids in train_set["input_ids"]] if group_by_length else None,
    )
    # num_workers=0: the sampler's position is then exactly what training consumed (the checkpoint stores it),
    # and its `batch_cluster` is the cluster of the batch the loader just returned.
    # A generator of its own: a new loader iterator otherwise draws its seed from torch's global generator, which
    # would shift the dropout masks of a resumed run against the uninterrupted one.
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=MultiTaskCollator(pad_token_id, padding_side="left"),  # targets at the ends of rows
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler
