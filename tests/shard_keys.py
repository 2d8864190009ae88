"""Run under torchrun: the sample keys this rank's shard stream yields in one pass, saved to OUT_rank.json.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/shard_keys.py OUT SHARDS
"""
import json
import sys

from langmim import dist
from langmim.data.shards import ShardStream


def main(out: str, shards: str) -> None:
    info = dist.setup("cpu")
    stream = ShardStream(shards, 32, seed=0, rank=info.rank, world_size=info.world_size, resampled=False, max_passes=1)
    keys = [item["key"] for item in stream]
    with open(f"{out}_{info.rank}.json", "w") as f:
        json.dump(keys, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
