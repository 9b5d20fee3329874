"""Test-only start-up hook, put on a launch's PYTHONPATH by tests/test_distributed_train.py: before every optimizer
step, the L2 norm of the gradients the optimizer is about to apply, each AutoEP expert counted once (for a world of
ep ranks without tensor parallelism, where every other parameter has the same gradient on every rank), appended by
rank 0 to the file MEGAMYTHOS_TEST_STEP_NORMS, one number a line; the launcher's process is left alone."""
import os

if "RANK" in os.environ and "MEGAMYTHOS_TEST_STEP_NORMS" in os.environ:
    import torch
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def _record_norm(optimizer, _args, _kwargs):
        from deepspeed.moe.utils import is_moe_param

        squares = torch.zeros(2, dtype=torch.float64)  # [replicated, this rank's experts]
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    squares[int(is_moe_param(p))] += p.grad.double().square().sum()
        experts = squares[1:].clone()
        dist.all_reduce(experts)
        if dist.get_rank() == 0:
            with open(os.environ["MEGAMYTHOS_TEST_STEP_NORMS"], "a") as out:
                out.write(f"{float((squares[0] + experts[0]).sqrt())!r}\n")

    register_optimizer_step_pre_hook(_record_norm)
