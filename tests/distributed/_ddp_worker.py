"""One rank of the 2-process gloo job the DDP tests launch with torchrun (scenarios run in one job).

Usage: python -m torch.distributed.run --standalone --nproc-per-node=2 _ddp_worker.py OUT ALICE BOB
Each rank writes OUT/rank<r>.pt with what the tests check.
"""
import sys
import warnings

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def main(out, alice, bob):
    from instahide.distributed import SharedConfig, train_shared
    from instahide.train import TrainConfig, train
    from instahide.train import recipe

    dist.init_process_group("gloo")          # the trainers find this group and use it
    rank = dist.get_rank()
    res = {}
    fast = dict(test_dataset="digits", batch_size=64, lr=0.05, progress=False, research_seed=4)
    # 1. shared trainer, 3 epochs
    final, model = train_shared(SharedConfig(encrypted=(alice, bob), epochs=3, out=f"{out}/shared", **fast),
                                return_model=True)
    res["shared_params"] = {k: v.detach().clone() for k, v in model.named_parameters()}
    res["shared_final"] = final

    # 2. the same, interrupted after epoch 2 on every rank, then resumed
    def stop(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    cut = SharedConfig(encrypted=(alice, bob), epochs=3, out=f"{out}/cut", **fast)
    try:
        train_shared(cut, on_epoch_end=stop)
    except KeyboardInterrupt:
        pass
    final, model = train_shared(cut, resume=True, return_model=True)
    res["resumed_params"] = {k: v.detach().clone() for k, v in model.named_parameters()}
    res["resumed_epochs_run"] = final["epochs_run"]

    # 3. a mismatched party must fail on every rank (no hang)
    try:
        train_shared(SharedConfig(encrypted=(alice, f"{out}/nowhere"), epochs=1, out=f"{out}/bad", **fast))
        res["bad"] = None
    except Exception as exc:  # noqa: BLE001
        res["bad"] = f"{type(exc).__name__}: {exc}"

    # 4. on-the-fly encryption under DDP: own shard, own keys; twice with one research seed
    otf = dict(dataset="digits", batch_size=64, lr=0.05, epochs=3, progress=False, research_seed=7)
    res["otf"] = [train(TrainConfig.make(out=f"{out}/otf{i}", **otf)) for i in (1, 2)]
    res["otf_key_bytes_seeded"] = recipe._key_generator(TrainConfig.make(**otf), 0, rank, 2).random_bytes(32)
    res["otf_key_bytes_entropy"] = recipe._key_generator(TrainConfig.make(dataset="digits"), 0, rank, 2).random_bytes(32)
    res["world1_key_bytes"] = recipe._key_generator(TrainConfig.make(**otf), 0).random_bytes(32)
    torch.save(res, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
