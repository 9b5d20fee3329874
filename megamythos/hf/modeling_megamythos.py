"""MythosLM as a Hugging Face causal LM: ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.

The wrapper holds the library's own :class:`MythosLM` (``self.model``; the export ships ``lm.py`` and what it
imports next to this file), so the weights, logits and decode cache are ours: ``generate()`` keeps one
:class:`ModelKVCache` (one latent cache per prelude layer, per loop index, per coda layer) in the cache slot
between steps and decodes through MLA's absorbed path, as ``megamythos.inference.generate`` does. The slot is
``cache`` from transformers 5.24 and ``past_key_values`` before (:data:`CACHE_SLOT`); ``forward`` takes both.

Loop count and exit rule are generation settings: ``config.n_loops`` (None -> ``mean_loops``) and
``config.exit_threshold``, overridable per call, e.g. ``model.generate(ids, n_loops=8, exit_threshold=0.1)`` or
``model(ids, n_loops=16)``; a call that continues a cache without ``n_loops`` runs the cache's loop count (fixed
when the cache was made). ``attention_mask`` (1 = real, 0 = padding) is honoured at inference, as transformers'
causal LMs honour it: a left-padded batch (the exported tokenizer pads on the left) gives each row the logits and
the ``generate()`` output of that row alone; positions count the real tokens before each one, so ``position_ids``
are not needed (and not read: ``position_ids`` given are checked to be those positions, else ``ValueError``).

The context is ``config.max_position_embeddings`` (our ``max_seq_len``), as in ``megamythos.inference.generate``:
RoPE is computed from the positions on the fly, so the model would run past it, at positions training never
showed it. A forward past the context raises ``ValueError``; ``generate()`` stops there with one warning when
``max_new_tokens`` (or ``max_length``) asks for more, and refuses a prompt that leaves no room. Raise
``config.max_position_embeddings`` to run past it anyway.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from megamythos.data.manifest import CHECKSUMS_FILE, ManifestError, verify_directory
from megamythos.hf.configuration_megamythos import MegamythosConfig
from megamythos.model.lm import ModelKVCache, MythosLM
from megamythos.model.moe import MoE
from megamythos.model.row_layout import IGNORE_INDEX

logger = logging.getLogger(__name__)

READ_PER_CALL = ("exit_threshold", "max_seq_len")  # ModelConfig fields forward reads from the HF config
CACHE_SLOT = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MythosCache:
    """The cache transformers' ``generate`` carries between forwards: our :class:`ModelKVCache`, whose loop
    count is fixed when it is made (every token is cached at every loop index). It crops back to a length, so
    assisted decoding (``prompt_lookup_num_tokens``, ``assistant_model``) drops a rejected draft's tokens."""

    is_linear = (False,)
    is_compileable = False
    is_croppable = True

    def __init__(self, kv: ModelKVCache) -> None:
        self.kv = kv

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the batch continues the sequence of row ``beam_idx[i]``."""
        self.kv.select_rows(beam_idx)

    def crop(self, max_length: int) -> None:
        """Drop cached tokens, in either of transformers' conventions: ``max_length`` <= 0 removes the last
        ``-max_length`` (transformers 5.24 on; 0 removes none), > 0 keeps the first ``max_length`` (before)."""
        length = self.kv.length
        self.kv.crop(length + max_length if max_length <= 0 else max_length)

    def activate_past_recording(self, **kwargs: Any) -> None:
        """Nothing to record before a :meth:`crop`: every token's keys/values stay cached until it."""


class MythosForCausalLM(PreTrainedModel, GenerationMixin):
    """``forward(input_ids [B, S], attention_mask=None, labels=None, cache=None, use_cache=None, n_loops=None,
    exit_threshold=None)`` -> ``CausalLMOutputWithPast(loss, logits [B, S, V], cache)`` (with ``return_dict=False``,
    or ``config.return_dict`` False, its tuple of the fields not None, as transformers' models); ``attention_mask``
    [B, cached + S] (1 = real, 0 = padding; in training right padding only); ``labels`` as in transformers (the inputs;
    shifted here, -100 ignored) give ``loss`` = our trainer's language-model loss, sum_i CE_i / max(n_scored, 1)
    (0 where no label is scored; the MoE balance terms are not in it), or with ``num_items_in_batch`` (transformers'
    ``Trainer`` passes the scored labels of its whole accumulated step) sum_i CE_i / max(num_items_in_batch, 1).
    ``past_key_values`` is ``cache`` under the name older transformers use, and the output holds the cache under
    :data:`CACHE_SLOT`. Cached plus new tokens past
    ``config.max_position_embeddings`` raise ``ValueError``, as do ``n_loops`` other than a given cache's (None: the
    cache's, else the config's), ``position_ids`` other than the mask's (:meth:`check_position_ids`),
    ``inputs_embeds`` (token ids only) and a cache of transformers' own (``DynamicCache``, ...)."""

    config_class = MegamythosConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.lm_head.weight": "model.tok_embeddings.weight"}

    def __init__(self, config: MegamythosConfig) -> None:
        super().__init__(config)
        self.model = MythosLM(config.model_config())
        self.post_init()

    def check_config_applies(self) -> None:
        """Raise ``ValueError`` naming the first model field of ``config`` that differs from the one the model was
        built with: the model reads ``n_loops``, ``exit_threshold`` and ``max_position_embeddings`` (``max_seq_len``)
        on every call, its other fields once, so one set on ``model.config`` after loading would change nothing in
        memory while :meth:`save_pretrained` wrote it."""
        built = self.model.config.to_dict()
        for name, value in self.config.model_config().to_dict().items():
            if name not in READ_PER_CALL and value != built[name]:
                raise ValueError(f"model.config.{name}={value!r} differs from the {built[name]!r} the model was built "
                                 f"with, which it keeps: set it when loading, from_pretrained(DIR, "
                                 f"trust_remote_code=True, {name}={value!r}), or set model.config.{name} back")

    def train(self, mode: bool = True) -> MythosForCausalLM:
        """``nn.Module.train``, after :meth:`check_config_applies` when ``mode`` (the model about to train)."""
        if mode:
            self.check_config_applies()
        return super().train(mode)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' save, after :meth:`check_config_applies` (nothing is written where it raises)."""
        self.check_config_applies()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """MythosLM initialises its own parameters; only the MoE's non-persistent load counter needs a value
        when transformers materialises the model from the meta device."""
        if isinstance(module, MoE):
            module.tokens_per_expert.zero_()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any,
                        **kwargs: Any) -> MythosForCausalLM:
        """transformers' loader, once a local export directory verifies against its ``checksums.json``
        (:func:`verify_directory`: every file of the export, its tokenizer included, before any is read): a file
        that differs, is missing or is not listed raises :class:`ManifestError` naming it; an export without
        a manifest (a ``save_pretrained`` copy, or an export written before exports carried one) loads with a
        warning. A Hub name is not checked."""
        directory = None if pretrained_model_name_or_path is None else Path(pretrained_model_name_or_path)
        if directory is not None and directory.is_dir():
            try:
                checked = verify_directory(directory)
            except ManifestError as err:
                raise ManifestError(err.path, f"{err.problem}; export the checkpoint again (--overwrite), or, where "
                                    f"the files were changed on purpose, remove {directory / CHECKSUMS_FILE}") from None
            if not checked:
                logger.warning("%s has no %s (a save_pretrained copy, or an export written before exports carried "
                               "checksums): its files are not verified", directory, CHECKSUMS_FILE)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate must not hand us a DynamicCache: _prepare_cache_for_generation makes ours

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict[str, Any], *args: Any,
                                      **kwargs: Any) -> None:
        """transformers' checks, then an empty :class:`MythosCache` at the loop count of the call (``n_loops``
        given to ``generate``, else the config's) where ``generate`` will use a cache and none was given:
        assisted decoding needs one before its first forward."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if generation_config.use_cache is not False and model_kwargs.get(CACHE_SLOT) is None:
            n_loops = self.loop_count(model_kwargs.get("n_loops"))
            model_kwargs[CACHE_SLOT] = MythosCache(ModelKVCache(self.model.config, n_loops))

    def loop_count(self, n_loops: int | None) -> int:
        """The loops a call runs without a cache: ``n_loops`` given, else ``config.n_loops``, else ``mean_loops``."""
        if n_loops is not None:
            return n_loops
        return self.config.mean_loops if self.config.n_loops is None else self.config.n_loops

    def _prepare_generated_length(self, generation_config: Any, input_ids_length: int, **kwargs: Any) -> Any:
        """transformers' length resolution (``max_new_tokens`` -> ``max_length``), then capped at the context as
        our ``generate`` caps it: one warning when the cap cuts the request short; a prompt that fills the
        context is refused (transformers would generate nothing but an error about ``max_length``)."""
        generation_config = super()._prepare_generated_length(generation_config, input_ids_length=input_ids_length,
                                                              **kwargs)
        context = self.config.max_position_embeddings
        if input_ids_length >= context:
            raise ValueError(f"the prompt is {input_ids_length} tokens but the model's context is {context} "
                             "positions (max_position_embeddings): no room for a new token; shorten the prompt")
        if generation_config.max_length > context:
            logger.warning("max_length %d (prompt %d tokens + new tokens) runs past the model's context of %d "
                           "positions (max_position_embeddings): stopping after %d new tokens",
                           generation_config.max_length, input_ids_length, context, context - input_ids_length)
            generation_config.max_length = context
        return generation_config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding [V, H] (``resize_token_embeddings`` does, then re-ties ``lm_head`` to it);
        the inner :class:`ModelConfig` takes its V, as transformers' config does."""
        self.model.tok_embeddings = value
        self.model.config.vocab_size = value.num_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the output projection H -> V (``resize_token_embeddings`` does; a tied head is then tied to the
        new embedding again)."""
        self.model.lm_head = value

    def check_position_ids(self, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           input_ids: torch.Tensor, cached: int) -> None:
        """Raise ``ValueError`` unless ``position_ids`` [B or 1, S] are, at every real token of input_ids [B, S], the
        positions the model gives it: the real tokens before it in its row of ``attention_mask`` [B, cached + S]
        (transformers' ``cumsum - 1``), or cached + s without a mask. The model reads no ``position_ids``, so
        others (an offset, sequences packed into one row) would be ignored without a word. One host sync."""
        layout = None if attention_mask is None else self.model.layout_of(attention_mask, input_ids, cached)
        if layout is None:
            expected = torch.arange(cached, cached + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            real = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            expected, real = layout.positions, layout.real
        if position_ids.shape[-1] != input_ids.shape[1] or not bool((position_ids == expected)[real].all()):
            raise ValueError("position_ids differ from the positions megamythos computes (each row's real tokens "
                             "before a token, from attention_mask), and it reads none: leave position_ids out, or "
                             "pass the attention_mask they come from (sequences packed into one row are not supported)")

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: MythosCache | None = None, labels: torch.Tensor | None = None, use_cache: bool | None = None,
                n_loops: int | None = None, exit_threshold: float | None = None,
                past_key_values: MythosCache | None = None, num_items_in_batch: torch.Tensor | int | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        if input_ids is None or kwargs.get("inputs_embeds") is not None:  # an AttributeError or TypeError before
            raise ValueError("megamythos takes input_ids, not inputs_embeds: pass the token ids (its prelude, loop "
                             "and coda start from its own embedding of them)")
        asked = [name for name in ("output_hidden_states", "output_attentions") if kwargs.get(name)]
        if asked:  # silently None before
            raise ValueError(f"megamythos does not return {' or '.join(asked)}: its layers loop, so there is no "
                             "per-layer output to give")
        if exit_threshold is None:  # the config's exit rule at inference; training runs every loop on every token
            exit_threshold = 0.0 if self.training else self.config.exit_threshold
        cache = past_key_values if cache is None else cache
        if cache is not None and not isinstance(cache, MythosCache):  # an AttributeError ('kv') from below before
            raise ValueError(f"megamythos decodes with its own cache, not a {type(cache).__name__}: pass none (forward "
                             "makes one with use_cache=True) or the cache of the previous output")
        if n_loops is None and cache is not None:  # a cache fixes the count (the config's was refused as other)
            n_loops = cache.kv.n_loops
        n_loops = self.loop_count(n_loops)
        past = cache.get_seq_length() if cache is not None else 0
        context = self.config.max_position_embeddings
        if past + input_ids.shape[1] > context:  # RoPE would rotate by angles training never used
            raise ValueError(f"{past + input_ids.shape[1]} positions ({past} cached + {input_ids.shape[1]} new) run "
                             f"past the model's context of {context} positions (max_position_embeddings): pass at "
                             "most that many, or raise config.max_position_embeddings to run past it anyway")
        if kwargs.get("position_ids") is not None:  # ignored before, whatever they said
            self.check_position_ids(kwargs["position_ids"], attention_mask, input_ids, past)
        if cache is None and use_cache:
            cache = MythosCache(ModelKVCache(self.model.config, n_loops))
        targets = None if labels is None else F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        out = self.model(input_ids, labels=targets, n_loops=n_loops, cache=cache.kv if cache is not None else None,
                         absorb=cache is not None, exit_threshold=exit_threshold, attention_mask=attention_mask)
        loss = out.loss
        if loss is not None and num_items_in_batch is not None:  # Trainer: the step's scored tokens, not these
            loss = loss * (targets != IGNORE_INDEX).sum() / torch.as_tensor(num_items_in_batch).clamp(min=1)
        output = CausalLMOutputWithPast(loss=loss, logits=out.logits, **{CACHE_SLOT: cache})
        return_dict = kwargs.get("return_dict")
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()
