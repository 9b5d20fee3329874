"""The DeepSpeed boundary: the model imports nothing DeepSpeed-shaped, and ``megamythos.parallel`` supplies what
AutoTP / AutoEP need from outside (the real multi-process runs are in test_distributed_train.py)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import megamythos.model.moe as moe_module
from megamythos.model.attention import MLA
from megamythos.model.moe import (
    MoE,
    MoEOutput,
    expert_bias_state,
    expert_counts_frozen,
    expert_counts_saved,
    register_moe_layer,
)
from megamythos.parallel import autoep_to_model_names, distributed_norm, expert_parallel, local_weights, tensor_parallel
from megamythos.parallel.expert_parallel import _autoep_expert_load, _BalanceLossHooks, autoep_section
from tests.helpers import REPO, small_config

MODEL_DIR = Path(__file__).resolve().parents[1] / "megamythos" / "model"
MODEL_FILES = sorted(path.stem for path in MODEL_DIR.glob("*.py"))
FORBIDDEN_IMPORTS = ("deepspeed", "megamythos.parallel", "megamythos.training")


def imported_modules(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_files_import_nothing_deepspeed_shaped(name: str) -> None:
    path = MODEL_DIR / f"{name}.py"
    source = path.read_text()
    bad = [m for m in imported_modules(ast.parse(source))
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IMPORTS)]
    assert not bad, f"{path.name} imports {bad}"
    assert "AutoEP" not in source, f"{path.name} refers to AutoEP"


def test_rope_key_gradient_is_summed_over_the_group_only_for_the_k_pe_columns(monkeypatch) -> None:
    """The hook on wkv_a touches only the last rope-dim output columns' gradient (here a fake 'sum' that doubles)."""
    cfg = small_config()
    grads = []
    for hooked in (False, True):
        torch.manual_seed(0)
        mla = MLA(cfg)
        if hooked:
            monkeypatch.setattr(tensor_parallel.dist, "all_reduce", lambda t, op=None, group=None: t.mul_(2))
            assert tensor_parallel.sum_rope_key_grad(mla, tp_group=object()) == 1
        x = torch.randn(2, 6, cfg.dim)
        mla(x, torch.arange(6)).square().sum().backward()
        grads.append(mla.wkv_a.weight.grad)
    plain, summed = grads
    r = cfg.kv_lora_rank
    assert torch.equal(summed[:r], plain[:r]) and torch.allclose(summed[r:], 2 * plain[r:])


class FakeAutoEPLayer(nn.Module):
    """AutoEP's replacement as the adapter sees it: ``router.gate``, ``router.e_score_correction_bias``,
    ``tokens_per_expert``, forward [B, S, H] -> [B, S, H] only (here computed by our MoE's weights). The MoE is
    kept out of the module tree, as AutoEP leaves none: the layer's counts and bias reach the helpers through its
    registered reader alone."""

    def __init__(self, moe: MoE) -> None:
        super().__init__()
        object.__setattr__(self, "moe", moe)  # not a submodule
        self.router = nn.Module()
        self.router.gate = moe.gate
        self.router.register_buffer("e_score_correction_bias", moe.gate.e_score_correction_bias)
        self.register_buffer("tokens_per_expert", moe.tokens_per_expert)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.moe(hidden_states).hidden


def test_autoep_adapter_gives_the_replacement_our_moe_contract(monkeypatch) -> None:
    cfg = small_config(seq_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    moe = MoE(cfg).train()
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(std=0.1)
        moe.gate.e_score_correction_bias.uniform_(-0.1, 0.1)
    layer = FakeAutoEPLayer(moe)
    _BalanceLossHooks(layer, moe.balance_loss)
    monkeypatch.setattr(moe_module, "_EXPERT_LOAD_READERS", dict(moe_module._EXPERT_LOAD_READERS))
    register_moe_layer(FakeAutoEPLayer, _autoep_expert_load)
    x = torch.randn(2, 5, cfg.dim)
    got, want = layer(x), moe(x)
    assert isinstance(got, MoEOutput) and torch.equal(got.hidden, want.hidden)
    assert torch.equal(got.aux_loss, want.aux_loss)
    model = nn.Sequential(layer)
    assert list(expert_bias_state(model)) == ["0"]  # the layer, through its reader
    assert torch.equal(expert_bias_state(model)["0"], moe.gate.e_score_correction_bias)
    with expert_counts_frozen(model):
        layer(x)
    assert float(layer.tokens_per_expert.sum()) == 2 * 2 * 5 * cfg.num_experts_per_tok  # two counted forwards
    restore = expert_counts_saved(model)  # the trainer's skip of a micro-batch whose loss is not finite
    layer(x)
    restore()
    assert float(layer.tokens_per_expert.sum()) == 2 * 2 * 5 * cfg.num_experts_per_tok


@pytest.mark.parametrize("kernel", [True, False])
def test_autoep_uses_grouped_mm_only_where_torch_has_the_kernel(kernel: bool, monkeypatch) -> None:
    """The template's use_grouped_mm stands where torch has a grouped-mm kernel; before torch 2.9 it is off,
    since DeepSpeed refuses to build grouped experts without torch._grouped_mm (2.6-2.7)."""
    monkeypatch.setattr(expert_parallel, "GROUPED_MM_KERNEL", kernel)
    section = autoep_section(small_config(), 2, {"use_grouped_mm": True, "combine_impl": "weighted_sum"})
    assert section["use_grouped_mm"] is kernel and section["combine_impl"] == "weighted_sum"


def test_autoep_checkpoint_names_map_back_to_the_model() -> None:
    """Every AutoEP name a universal checkpoint holds maps to the model's; the selection bias, which the universal
    form of a ZeRO-1/2 AutoEP checkpoint carries, was left under its AutoEP name (found 2026-12-06: export,
    evaluate and generate of such a checkpoint were refused as a model with an unexpected weight)."""
    e, f, h = 4, 3, 5
    w1, w2, w3, gate = torch.randn(e, f, h), torch.randn(e, h, f), torch.randn(e, f, h), torch.randn(e, h)
    out = autoep_to_model_names({"m.experts.w1": w1, "m.experts.w2": w2, "m.experts.w3": w3,
                                 "m.router.gate.weight": gate, "m.shared_experts.w_up.weight": gate,
                                 "m.router.e_score_correction_bias": gate[0]})
    assert set(out) == {"m.experts.gate_up_proj", "m.experts.down_proj", "m.gate.weight",
                        "m.shared_experts.w_up.weight", "m.gate.e_score_correction_bias"}
    assert torch.equal(out["m.experts.gate_up_proj"], torch.cat([w1, w3], dim=1)) and out["m.experts.down_proj"] is w2


def zero3_partition(values: list[float], numel: int, rank: int, ranks: int, **marks: bool) -> nn.Parameter:
    """A parameter as ZeRO-3 leaves it on partition rank ``rank`` of ``ranks``: ``p.data`` empty, ``ds_tensor`` this
    rank's ``len(values)`` elements of its ``numel`` (past the end: padding); ``marks``: AutoTP's / AutoEP's."""
    p = nn.Parameter(torch.empty(0))
    p.ds_tensor = torch.tensor(values)
    p.ds_tensor.ds_numel = len(values)
    p.ds_numel, p.ds_zero_partition_rank, p.ds_zero_partition_world_size = numel, rank, ranks
    for name, value in marks.items():
        setattr(p, name, value)
    return p


def test_a_zero3_partition_is_read_without_its_padding_and_counted_by_its_holders() -> None:
    """ZeRO-3 pads each parameter to a multiple of its partition group and leaves the padding uninitialised: the
    weights norm reads this rank's share only, held by copies(p) / group size ranks (4 ranks, TP 2: a replicated
    weight is partitioned over the 2 data-parallel ranks of each TP rank, so each part is held twice; an AutoTP
    shard once; an AutoEP expert, on 2 of the 4 ranks, partitioned over those 2, once)."""
    weights, copies = local_weights(zero3_partition([3.0, 4.0, 1e30], numel=5, rank=1, ranks=2), 4, 2, 2)
    assert weights.tolist() == [3.0, 4.0] and copies == 2
    assert local_weights(zero3_partition([1e30], numel=1, rank=1, ranks=2), 4, 2, 2)[0].numel() == 0  # all padding
    assert local_weights(zero3_partition([1.0], 2, 0, 2, tensor_model_parallel=True), 4, 2, 2)[1] == 1
    assert local_weights(zero3_partition([1.0], 2, 0, 2, allreduce=False), 4, 2, 2)[1] == 1
    # a world of one holds everything: the norm without a collective, each tensor's norm in fp32 (bf16 weights)
    bf16 = torch.full((1000,), 0.1, dtype=torch.bfloat16)
    assert distributed_norm([(torch.tensor([3.0]), 1), (None, 1), (torch.tensor([4.0]), 1)], 1) == 5.0
    assert distributed_norm([(bf16, 1)], 1) == pytest.approx(float(bf16.double().norm()), rel=1e-7)


def test_deepspeeds_muon_module_is_imported_without_importing_inductor() -> None:
    """``deepspeed.initialize`` imports DeepSpeed's Muon optimizer module at every start, whose kernels are wrapped
    in ``torch.compile`` at import, which imports torch's inductor: 3-4 s of CPU per rank at each eager launch
    (found 2026-12-06: process CPU time to the first step 9.5-12.3 s, 6.5-9.0 s without). The trainer imports it
    first with DeepSpeed's decorator left out; the module is then the one DeepSpeed finds, and the decorator is
    DeepSpeed's again."""
    probe = """
import sys
import deepspeed.runtime.compiler as compiler
factory = compiler.compile
from megamythos.training.optimizers import DEEPSPEED_MUON, import_muon_without_compiling
import_muon_without_compiling()
from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
assert DEEPSPEED_MUON in sys.modules and compiler.compile is factory
print("inductor" if "torch._inductor.compile_fx" in sys.modules else "no inductor")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no inductor"
