"""Padded batches at inference: with an attention mask, a left-padded row gets the logits, exit depths and generated
tokens of that row alone (MythosLM.forward, the cache, the exit rule and compaction, megamythos.inference.generate)."""
from __future__ import annotations

import copy

import pytest
import torch

from megamythos.inference.generate import SamplingConfig, generate, left_pad
from megamythos.model.lm import ModelKVCache, MythosLM, compile_blocks
from megamythos.model.row_layout import RowLayout
from megamythos.model.token_subset import TokenSubset
from tests.helpers import requires_grouped_mm, small_config, threshold_with_margin

LENGTHS = (12, 7, 4)  # prompt lengths of one batch: 36 tokens, so the exit rule compacts its prefill
DECODE = 3  # cached decode steps after the prompt
LOOPS = 5


def _run(model: MythosLM, ids: torch.Tensor, mask: torch.Tensor | None, threshold: float, cached: bool,
         absorb: bool) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(logits [B, S], depths [B, S], loops run per forward) of one forward, or of a prefill of the prompt and
    ``DECODE`` one-token cached steps (the last ``DECODE`` ids), the mask growing by a real column per step."""
    with torch.no_grad():
        if not cached:
            outs = [model(ids, n_loops=LOOPS, exit_threshold=threshold, attention_mask=mask)]
        else:
            cache, prompt = ModelKVCache(model.config, LOOPS), ids.shape[1] - DECODE
            outs = [model(ids[:, :prompt], cache=cache, absorb=absorb, exit_threshold=threshold,
                          attention_mask=None if mask is None else mask[:, :prompt])]
            outs += [model(ids[:, i:i + 1], cache=cache, absorb=absorb, exit_threshold=threshold,
                           attention_mask=None if mask is None else mask[:, :i + 1])
                     for i in range(prompt, ids.shape[1])]
    return (torch.cat([o.logits.float() for o in outs], dim=1), torch.cat([o.stats["depth"] for o in outs], dim=1),
            [float(o.stats["n_loops"]) for o in outs])


def test_positions_count_the_real_tokens_before_and_padding_keys_are_hidden() -> None:
    """Hugging Face's convention: position = attention_mask.cumsum(-1) - 1 at the real tokens (RoPE is relative, so
    logits alone would not tell a row's offset); a query sees the real keys up to itself, a padding query only
    itself. The last 3 of 5 columns are new (2 cached)."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]])
    padding = RowLayout.of(mask, 3)
    assert padding.positions[mask[:, 2:].bool()].tolist() == [0, 1, 2, 2, 3, 4, 1, 2]
    assert padding.real.tolist() == [[True, True, True], [True, True, True], [False, True, True]]
    rows = padding.mask[:, 0].int().tolist()
    assert rows[0] == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert rows[1] == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert rows[2] == [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 1, 1]]  # the padding query at column 2 sees itself
    subset = TokenSubset.of(torch.tensor([[False, True, True], [False, False, True], [False, False, False]]))
    assert padding.query_mask(subset)[:, 0].int().tolist() == [  # padded layout; its padding slots see every key
        [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("exit_rule", [False, True])
@pytest.mark.parametrize("attn_type,absorb", [("mla", False), ("mla", True), ("gqa", False)])
def test_a_left_padded_row_computes_as_that_row_alone(attn_type: str, absorb: bool, exit_rule: bool, cached: bool,
                                                      dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(attn_type=attn_type)).to(dtype).eval()
    rows = [torch.randint(0, 97, (1, n + DECODE)) for n in LENGTHS]
    threshold = 0.0
    if exit_rule:
        with torch.no_grad():
            changes = [model(r, n_loops=LOOPS, exit_threshold=0.0).stats["relative_change"][1] for r in rows]
        threshold = threshold_with_margin(torch.cat([c.flatten() for c in changes]))
    alone = [_run(model, r, None, threshold, cached, absorb) for r in rows]
    ids, mask = left_pad([r[0] for r in rows], pad_id=5)
    logits, depth, loops = _run(model, ids, mask, threshold, cached, absorb)

    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    width = ids.shape[1]
    for i, (row_logits, row_depth, _) in enumerate(alone):
        real = slice(width - row_logits.shape[1], width)
        scale = row_logits.abs().max()
        assert (logits[i, real] - row_logits[0]).abs().max() <= tolerance * scale, i
        assert torch.equal(depth[i, real], row_depth[0]), (i, depth[i], row_depth)
        assert (depth[i, :real.start] == 0).all()  # padding never iterates
    assert torch.isfinite(logits).all()  # padding queries too (each sees itself)
    # each forward runs as many loops as its longest-running row alone: padding never keeps it iterating
    assert loops == [max(row_loops[k] for _, _, row_loops in alone) for k in range(len(loops))]
    if exit_rule:
        real_depth = depth[mask.bool()]
        assert real_depth.min() < real_depth.max()


def test_padding_never_reaches_the_moe_under_compaction_and_never_keeps_the_batch_iterating() -> None:
    """36 tokens, 13 of them padding: compaction runs from the first loop, the MoE sees each real token once per
    loop it ran and no padding; with every real token exiting after one loop, so does the batch."""
    torch.manual_seed(0)
    model = MythosLM(small_config()).eval()
    ids, mask = left_pad([torch.randint(0, 97, (n,)) for n in LENGTHS])
    seen = []
    model.recurrent.block.moe.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        every = model(ids, n_loops=LOOPS, exit_threshold=0.0, attention_mask=mask)
        assert sum(seen) == LOOPS * sum(LENGTHS) and torch.equal(every.stats["depth"], LOOPS * mask.float())
        assert every.stats["mean_depth"] == LOOPS  # over the real tokens
        seen.clear()
        at_once = model(ids, n_loops=LOOPS, exit_threshold=1e9, attention_mask=mask)  # every change is below 1e9
    assert seen == [sum(LENGTHS)] and at_once.stats["n_loops"] == 1


@pytest.mark.parametrize("attn_type", ["mla", "gqa"])
def test_an_all_ones_mask_is_the_unpadded_forward(attn_type: str) -> None:
    torch.manual_seed(0)
    model = MythosLM(small_config(attn_type=attn_type)).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        plain = model(ids, n_loops=3)
        ones = model(ids, n_loops=3, attention_mask=torch.ones_like(ids))
    assert torch.equal(plain.logits, ones.logits) and torch.equal(plain.stats["depth"], ones.stats["depth"])


def test_a_mask_it_cannot_use_is_one_error_naming_it() -> None:
    model = MythosLM(small_config()).eval()
    ids, mask = left_pad([[1, 2, 3], [4]])
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"^attention_mask of shape \[2, 2\] must be \[batch, cached \+ new "
                                             r"tokens\] = \[2, 3\]"):
            model(ids, attention_mask=mask[:, 1:])
        cache = ModelKVCache(model.config, 2)
        model(ids, cache=cache, attention_mask=mask)
        with pytest.raises(ValueError, match="marks every new token as padding"):
            model(ids[:, :1], cache=cache, attention_mask=torch.cat((mask, torch.zeros(2, 1, dtype=mask.dtype)), 1))
    with pytest.raises(ValueError, match=r"^an attention_mask with padding before a real token is inference-only"):
        model.train()(ids, labels=ids, attention_mask=mask)
    right = mask.flip(1)  # right padding trains; with loop_capacity the padding would enter its ranking
    capped = MythosLM(small_config(loop_capacity=(1.0,) + (0.5,) * 5)).train()
    with pytest.raises(ValueError, match=r"pad on the right .* or train without loop_capacity"):
        capped(ids, labels=ids, n_loops=3, attention_mask=right)


@pytest.mark.parametrize("exit_threshold", [0.0, 0.05])
def test_generate_continues_prompts_of_different_lengths_as_each_alone(exit_threshold: float) -> None:
    """Greedy generation of a left-padded batch equals each prompt's alone, eos ending a row as alone."""
    torch.manual_seed(0)
    model = MythosLM(small_config(init_std=0.3)).eval()  # a wide init: varied greedy tokens from a random model
    prompts = [torch.randint(0, 97, (n,)) for n in LENGTHS]
    cfg = SamplingConfig(max_new_tokens=6, temperature=0, n_loops=4, exit_threshold=exit_threshold)
    alone = [generate(model, p[None], cfg)[0][0, len(p):] for p in prompts]
    assert len({tuple(a.tolist()) for a in alone}) == len(alone), "pick another seed: the rows continue alike"
    ids, mask = left_pad(prompts, pad_id=3)
    batch, stats = generate(model, ids, cfg, attention_mask=mask)
    assert torch.equal(batch[:, :ids.shape[1]], ids) and len(stats.loops_per_token) == 6
    for row, expected in zip(batch[:, ids.shape[1]:], alone):
        assert torch.equal(row, expected), (row, expected)
    eos = int(alone[1][1])  # row 1 ends at its second token; the others go on as alone unless they sample it
    ended, _ = generate(model, ids, SamplingConfig(max_new_tokens=6, temperature=0, n_loops=4,
                                                   exit_threshold=exit_threshold, eos_id=eos), attention_mask=mask)
    assert ended[1, ids.shape[1]:].tolist()[:2] == alone[1][:2].tolist()
    assert set(ended[1, ids.shape[1] + 2:].tolist()) <= {eos}
    with pytest.raises(ValueError, match="marks a prompt's last token as padding: pad the prompts on the left"):
        generate(model, ids, cfg, attention_mask=mask.flip(1))


@requires_grouped_mm
def test_compiled_blocks_take_a_padded_batch_in_one_graph_each() -> None:
    """compile_blocks (fullgraph, aot_eager: Dynamo and AOTAutograd as inductor would see them) on a padded prefill
    with the exit rule (compaction) and a padded cached decode step: the eager numbers, no graph break."""
    torch.manual_seed(0)
    eager = MythosLM(small_config()).eval()
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    compile_blocks(compiled, backend="aot_eager", fullgraph=True)
    ids, mask = left_pad([torch.randint(0, 97, (n,)) for n in LENGTHS])
    step_mask = torch.cat((mask, torch.ones(len(LENGTHS), 1, dtype=mask.dtype)), dim=1)
    torch._dynamo.utils.counters.clear()
    outs = []
    with torch.no_grad():
        for model in (eager, compiled):
            cache = ModelKVCache(model.config, LOOPS)
            prefill = model(ids, cache=cache, absorb=True, exit_threshold=0.05, attention_mask=mask)
            step = model(ids[:, -1:], cache=cache, absorb=True, exit_threshold=0.05, attention_mask=step_mask)
            outs.append((prefill, step))
    for want, got in zip(*outs):
        assert torch.allclose(got.logits, want.logits, atol=1e-5)
        assert torch.equal(got.stats["depth"], want.stats["depth"])
    assert outs[0][0].stats["depth"][mask.bool()].min() < LOOPS  # the exit rule compacted the prefill
    assert not torch._dynamo.utils.counters["graph_break"]
