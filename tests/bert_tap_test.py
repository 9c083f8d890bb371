"""The tap test for the BERT family (BERT, RoBERTa, XLM-R): the attention probabilities
recomputed from the tapped q/k projections (scale 1/sqrt(head size), padding mask) equal
transformers' own eager attention probabilities on a ragged batch (RoBERTa runs the same code
as XLM-R). The other families' tap tests are in modernbert_test.py and xlmr_xl_test.py."""

import jax.numpy as jnp
import pytest

from family_fixtures import forward, real_query_max_diff, torch_attentions
from hf_fixtures import make_tiny_hf_model, ragged_batch
from minilm_jax import hf
from minilm_jax.models.attention import attention_mask, attention_probs


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_tap_reproduces_teacher_attention(tmp_path, family):
    torch_model = make_tiny_hf_model(family, tmp_path, seed=7, with_tokenizer=False)
    torch_model.set_attn_implementation("eager")  # probabilities come back only from eager
    config, model = hf.load_pretrained(tmp_path)
    ids, mask, types = ragged_batch(
        family, [16, 11, 3, 7], 16, vocab_size=config.vocab_size, type_ids=family == "bert"
    )
    theirs = torch_attentions(torch_model, ids, mask, token_type_ids=types)
    out = forward(model, ids, mask, token_type_ids=types)
    key_mask = attention_mask(jnp.asarray(mask, bool))
    diffs = [
        real_query_max_diff(
            attention_probs(
                q, k, key_mask, num_heads=config.num_heads, scale=config.head_dim**-0.5
            ),
            a,
            mask,
        )
        for (q, k, _), a in zip(out.qkv, theirs)
    ]
    print(f"{family} tap probabilities: max diff per layer " + ", ".join(f"{d:.2e}" for d in diffs))
    assert max(diffs) <= 1e-5
