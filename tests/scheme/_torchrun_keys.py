"""One rank of a 2-process gloo job (tests/scheme/test_fork_safety.py): every rank builds
KeyGenerator.from_seed(SEED) and draws coefficients and a mask; rank 0 writes what all ranks drew.

Usage: python -m torch.distributed.run --standalone --nproc-per-node=2 _torchrun_keys.py OUT.json SEED
"""
import json
import sys


def main(out, seed):
    import torch.distributed as dist

    from instahide.scheme import KeyGenerator, sample_key

    dist.init_process_group("gloo")
    key = sample_key(8, 4, (3, 4, 4), generator=KeyGenerator.from_seed(seed))
    drawn = [None] * dist.get_world_size()
    dist.all_gather_object(drawn, {"rank": dist.get_rank(), "coefficients": key.coefficients.tolist(),
                                   "mask": key.mask_bits.tolist()})
    if dist.get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(drawn, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
