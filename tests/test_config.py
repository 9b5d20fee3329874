"""The named presets and the one parser of FIELD=VALUE model overrides."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from megamythos.model.config import PRESETS, ConfigError, get_preset, parse_override
from megamythos.model.params import count
from tests.helpers import REPO

# The presets as they were when they were still 17 positional numbers per scale (commit 8d5a96f): parameter
# count (which fixes every shape) and the fields that change no shape, less the ACT halting head (dim + 1)
# that adaptive-depth early exit replaced. A change here is a change of the model.
FROZEN = {  # name: (parameters, max_seq_len, mean_loops, rope_theta)
    "tiny": (7_132_512, 512, 4, 1e4),
    "small": (113_371_648, 2048, 8, 1e4),
    "1b": (1_056_704_512, 4096, 16, 1e4),
    "3b": (2_966_227_840, 4096, 16, 1e4),
    "10b": (9_835_581_696, 8192, 24, 1e4),
    "50b": (49_128_540_160, 8192, 32, 1e4),
    "100b": (92_364_556_800, 1_000_000, 32, 1e6),
    "500b": (455_117_574_144, 1_000_000, 48, 1e6),
    "1t": (917_097_235_456, 1_000_000, 64, 2e6),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_unchanged(name):
    config = get_preset(name)
    assert (count(config).total, config.max_seq_len, config.mean_loops, config.rope_theta) == FROZEN[name]


def test_unknown_preset_and_field_are_refused():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match=r"no field\(s\) \['dims'\]"):
        get_preset("tiny", dims=64)
    with pytest.raises(ConfigError, match=r"no field\(s\) \['dims'\]"):  # was a TypeError (found 2026-12-06)
        get_preset("tiny").replace(dims=64)
    assert get_preset("tiny").replace(dim=64) == get_preset("tiny", dim=64)


@pytest.mark.parametrize("text, expected", [
    ("dim=64", ("dim", 64)), ("init_std=1e-3", ("init_std", 1e-3)), ("loop_embedding=False", ("loop_embedding", False)),
    ("loop_embedding=true", ("loop_embedding", True)), ("score_func=sigmoid", ("score_func", "sigmoid")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected
    assert type(parse_override(text)[1]) is type(expected[1])


@pytest.mark.parametrize("text", ["dim", "=64"])
def test_parse_override_needs_field_and_value(text):
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        parse_override(text)


@pytest.mark.parametrize("field, value", [
    ("tie_embeddings", "false"), ("loop_embedding", "no"), ("route_norm", 2), ("checkpoint_loops", None),
    ("sample_depth", 0), ("checkpoint_dense_blocks", "true"), ("extra", None), ("decay_margin", "0.1"),
    ("decay_floor", None), ("norm_eps", True), ("exit_threshold", False),
])
def test_a_value_of_the_wrong_type_names_the_field(field, value):
    """A JSON config's "false" (a truthy string) or a number where a switch goes is refused naming the field, in
    the model's constructor as in from_json. Before (found 2026-12-06): the switches took any value, so
    "loop_embedding": "false" turned the loop signal on, and a string decay margin raised a TypeError naming no
    field."""
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}="):
        get_preset("tiny", **{field: value})


def test_the_model_names_import_from_the_package_and_config_stays_free_of_torch():
    """``from megamythos.model import MythosLM`` was an ImportError (found 2026-12-06, a library user's first
    line); the names load on first use, so the config and the analytic counts still import without torch."""
    probe = """
import sys
import megamythos.model.config, megamythos.model.params
assert "torch" not in sys.modules, "config/params imported torch"
from megamythos.model import ModelConfig, MythosLM, compile_blocks, count, get_preset
model = MythosLM(get_preset("tiny", dim=64, n_heads=2, n_kv_heads=1))
assert count(model.config).total == sum(p.numel() for p in model.parameters())
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
