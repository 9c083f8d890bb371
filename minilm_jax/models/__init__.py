"""Encoder models and task heads.

`Transformer` covers the BERT family (BERT, RoBERTa, XLM-R). Every family module provides a
config dataclass (with the shared fields `family`, `vocab_size`, `hidden_size`, `num_layers`,
`num_heads`, `intermediate_size`, `pad_token_id`, `dtype`, `param_dtype`, `replace`,
`to_dict`), an NNX model with the encoder call protocol

    model(input_ids, attention_mask, token_type_ids=None, *, num_layers=None,
          deterministic=True, rngs=None) -> output with .last_hidden_state,
          .hidden_states, .qkv, .pooler_output

and `unreachable_param(path, num_layers, used)`, the parameters a relation loss on the last
layer's q/k/v cannot reach. `MODEL_FAMILIES` maps each family name to its module.
"""

from types import ModuleType

import jax
from flax import nnx

from minilm_jax.models import deberta, modernbert, transformer, xlmr_xl
from minilm_jax.models.transformer import (
    FAMILIES,
    Transformer,
    TransformerConfig,
    TransformerOutput,
    position_ids,
    student_config,
)

MODEL_FAMILIES: dict[str, ModuleType] = {family: transformer for family in FAMILIES}
MODEL_FAMILIES.update({m.FAMILY: m for m in (deberta, modernbert, xlmr_xl)})


def family_module(config) -> ModuleType:
    if config.family not in MODEL_FAMILIES:
        raise ValueError(
            f"model family {config.family!r} is not supported; allowed: {tuple(MODEL_FAMILIES)}"
        )
    return MODEL_FAMILIES[config.family]


def build_model(config, *, rngs: nnx.Rngs, add_pooler: bool = True):
    """A freshly initialised encoder of `config`'s family."""
    module = family_module(config)
    if module is transformer:
        return Transformer(config, rngs=rngs, add_pooler=add_pooler)
    return module.build(config, rngs=rngs, add_pooler=add_pooler)


def _key(entry):
    return getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))


def unreachable_params(config, params, used=frozenset("qkv")):
    """A bool pytree like `params` (an `nnx.State` of the model's parameters): True where a
    relation loss that reads the projections `used` of the last layer gives no gradient."""
    rule = family_module(config).unreachable_param
    used = frozenset(used)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: rule(tuple(_key(k) for k in path), config.num_layers, used), params
    )


__all__ = [
    "FAMILIES",
    "MODEL_FAMILIES",
    "Transformer",
    "TransformerConfig",
    "TransformerOutput",
    "build_model",
    "family_module",
    "position_ids",
    "student_config",
    "unreachable_params",
]
