"""The BERT-family Transformer encoder (BERT, RoBERTa, XLM-R) as a Flax NNX module.

The module tree mirrors Hugging Face's `BertModel` (embeddings, one module per layer, optional
pooler) so that `model.layers[i]` is HF layer i and `minilm_jax.hf` can load checkpoints with a
plain key table. The three families differ only in their config (token types, LayerNorm
epsilon, pad id) and in how position ids are made (`position_ids`).

Numerics: parameters are stored in `param_dtype` (float32 by default); activations run in the
compute `dtype` (bfloat16 casts them); attention scores and softmax always run in float32, and
padded keys are removed with `jnp.where`, never with a large additive constant that would
overflow in half precision.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from minilm_jax.models.attention import attention
from minilm_jax.models.attention import attention_mask as attention_mask_of
from minilm_jax.models.remat import layer_caller

FAMILIES = ("bert", "roberta", "xlm-roberta")
# Only HF's "gelu" (exact erf GELU): it is what every BERT/RoBERTa/XLM-R checkpoint uses.
ACTIVATIONS = ("gelu",)
DTYPES = ("float32", "bfloat16")

_SPEC_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class ConfigMethods:
    """`replace`, `to_dict`, `from_dict` for the frozen config dataclass of every family; errors
    name the config class and its fields."""

    def replace(self, **changes):
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown {type(self).__name__} field(s) {unknown}; allowed: "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed: {names}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in d
        ]
        if required:
            raise ValueError(f"{cls.__name__} dict lacks required field(s) {required}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ConfigMethods):
    """Architecture of one encoder. Field names follow the paper/our code; `minilm_jax.hf`
    translates them to and from Hugging Face's config.json names."""

    family: str  # one of FAMILIES
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int  # feed-forward width (4 x hidden in BERT and the paper's students)
    max_position_embeddings: int  # rows of the position table (514 for RoBERTa: 512 + offset)
    type_vocab_size: int  # 2 for BERT, 1 for RoBERTa/XLM-R
    layer_norm_eps: float  # 1e-12 BERT, 1e-5 RoBERTa/XLM-R
    pad_token_id: int
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"  # exact erf GELU as in HF "gelu"
    dtype: str = "float32"  # compute dtype of activations ("float32" | "bfloat16")
    param_dtype: str = "float32"  # storage dtype of parameters
    initializer_range: float = 0.02  # std of the normal init of kernels and embeddings (as HF)
    bos_token_id: int | None = None  # only carried to config.json (RoBERTa/XLM-R: 0)
    eos_token_id: int | None = None  # only carried to config.json (RoBERTa/XLM-R: 2)

    # The families this config class describes (a subclass describes others: XLMRobertaXLConfig).
    families: ClassVar[tuple[str, ...]] = FAMILIES

    def __post_init__(self):
        cls = type(self).__name__
        if self.family not in self.families:
            raise ValueError(f"{cls}.family={self.family!r}; allowed: {self.families}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls}.{name}={value!r}; must be a positive int")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{cls}.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"{cls}.pad_token_id={self.pad_token_id}; must be in "
                f"[0, vocab_size={self.vocab_size})"
            )
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{cls}.{name}={value}; must be None or in [0, vocab_size={self.vocab_size})"
                )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{cls}.{name}={getattr(self, name)}; must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{cls}.layer_norm_eps={self.layer_norm_eps}; must be > 0")
        if not self.initializer_range > 0:
            raise ValueError(f"{cls}.initializer_range={self.initializer_range}; must be > 0")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{cls}.hidden_act={self.hidden_act!r}; allowed: {ACTIVATIONS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{cls}.{name}={getattr(self, name)!r}; allowed: {DTYPES}")
        if self.max_sequence_length < 1:
            raise ValueError(
                f"{cls}.max_position_embeddings={self.max_position_embeddings} leaves no "
                f"position for real tokens after the offset {self.position_offset} of family "
                f"{self.family!r} (pad_token_id + 1)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        """First position id of a real token: RoBERTa/XLM-R (fairseq) count from pad_token_id + 1."""
        return 0 if self.family == "bert" else self.pad_token_id + 1

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table covers (512 for bert-base and roberta-base)."""
        return self.max_position_embeddings - self.position_offset


# Families a student can have when its teacher is of another family (`student_config(...,
# family=)`): the absolute-position encoders, whose only ties to the tokenizer are the
# vocabulary and the pad id. RoBERTa-style students count positions from pad_token_id + 1.
CROSS_FAMILY_STUDENTS = FAMILIES + ("xlm-roberta-xl",)
# Positions of a cross-family student unless its inputs need more: BERT's 512.
CROSS_FAMILY_POSITIONS = 512


def student_config(
    spec: str,
    teacher,
    *,
    num_heads: int = 12,
    intermediate_size: int | None = None,
    family: str | None = None,
    max_length: int | None = None,
    **overrides,
):
    """A student architecture from a 'LAYERSxHIDDEN' spec ('6x384': 6 layers, hidden 384).

    Same family (`family` None or the teacher's): everything the student must share with the
    teacher to read the same token ids (vocabulary, family, position table, token types,
    pad/bos/eos ids) and the LayerNorm epsilon, dropout, activation and dtypes are copied from
    `teacher`, and so is the family: the student is of the teacher's config class (a ModernBERT
    teacher gives a ModernBERT student with its rotary, window and layer pattern; a DeBERTa
    teacher a DeBERTa student with its relative layout).

    Another family (`family` one of `CROSS_FAMILY_STUDENTS`, e.g. a BERT student of a ModernBERT
    or DeBERTa teacher; relations only need the student to read the teacher's token ids):
    from the teacher, the vocabulary size (embedding rows), pad id, bos/eos ids, init range
    and dtypes; from the student's family, everything else, as that family's own models have
    it: token types (2 for BERT, whose fine-tuning gives a pair's second segment type 1; 1 for
    RoBERTa/XLM-R), LayerNorm epsilon (1e-12 BERT, 1e-5 RoBERTa/XLM-R), exact GELU, and an
    absolute position table of 512 positions (BERT's), or `max_length` when longer, never more
    than the teacher takes (RoBERTa-style students add pad_token_id + 1 rows of offset).

    The feed-forward width defaults to 4 x hidden as in the paper (not the teacher's width),
    or, for a same-family student, to what the teacher's config class says in
    `student_intermediate_size(hidden_size)` where it has one (ModernBERT: the teacher's ratio,
    as its gated feed-forward is not 4 x wide). `overrides` replace any other field.
    """
    match = _SPEC_RE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"student spec {spec!r} is not of the form 'LAYERSxHIDDEN' (e.g. '6x384')")
    num_layers, hidden_size = int(match.group(1)), int(match.group(2))
    if num_layers < 1 or hidden_size < 1:
        raise ValueError(f"student spec {spec!r}: layers and hidden size must be positive")
    if hidden_size % num_heads:
        raise ValueError(
            f"student spec {spec!r}: hidden size {hidden_size} is not divisible by "
            f"num_heads={num_heads}"
        )
    shape = dict(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads)
    if family is None or family == teacher.family:
        if intermediate_size is None:
            default = getattr(teacher, "student_intermediate_size", None)
            intermediate_size = 4 * hidden_size if default is None else default(hidden_size)
        return teacher.replace(intermediate_size=intermediate_size, **shape, **overrides)
    if family not in CROSS_FAMILY_STUDENTS:
        raise ValueError(
            f"a student of family {family!r} needs a teacher of that family (this teacher is "
            f"{teacher.family!r}); a student of another family than its teacher's can be one "
            f"of {CROSS_FAMILY_STUDENTS}"
        )
    positions = min(teacher.max_sequence_length, max(CROSS_FAMILY_POSITIONS, max_length or 0))
    offset = 0 if family == "bert" else teacher.pad_token_id + 1
    if family == "xlm-roberta-xl":
        from minilm_jax.models.xlmr_xl import XLMRobertaXLConfig as config_class
    else:
        config_class = TransformerConfig
    fields = dict(
        family=family,
        vocab_size=teacher.vocab_size,
        intermediate_size=4 * hidden_size if intermediate_size is None else intermediate_size,
        max_position_embeddings=positions + offset,
        type_vocab_size=2 if family == "bert" else 1,
        layer_norm_eps=1e-12 if family == "bert" else 1e-5,
        pad_token_id=teacher.pad_token_id,
        hidden_act="gelu",
        dtype=teacher.dtype,
        param_dtype=teacher.param_dtype,
        initializer_range=teacher.initializer_range,
        bos_token_id=getattr(teacher, "bos_token_id", None),
        eos_token_id=getattr(teacher, "eos_token_id", None),
        **shape,
    )
    return config_class(**{**fields, **overrides})


@flax.struct.dataclass
class TransformerOutput:
    last_hidden_state: jax.Array  # [B, T, D]: output of the last layer run
    hidden_states: tuple[jax.Array, ...]  # layers run + 1, embeddings first (as HF)
    qkv: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]  # per layer run, [B, T, D] each
    pooler_output: jax.Array | None  # tanh(dense(h[:, 0])) when the full model ran with a pooler


def position_ids(config: TransformerConfig, input_ids: jax.Array) -> jax.Array:
    """Position ids [B, T] as Hugging Face computes them for each family.

    BERT: 0..T-1. RoBERTa/XLM-R: real tokens count from pad_token_id + 1 and padding tokens get
    pad_token_id, decided by `input_ids != pad_token_id` (not by the attention mask), exactly as
    transformers' `create_position_ids_from_input_ids`.
    """
    if config.family == "bert":
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
    not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id


def _normal_init(stddev: float, zero_row: int | None = None):
    """HF's init: N(0, initializer_range); an embedding's padding_idx row starts at zero."""
    normal = nnx.initializers.normal(stddev)

    def init(key, shape, dtype=jnp.float32):
        value = normal(key, shape, dtype)
        return value if zero_row is None else value.at[zero_row].set(0)

    return init


def _linear(config: TransformerConfig, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=_normal_init(config.initializer_range),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def _layer_norm(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance: E[x^2]-E[x]^2 loses digits when activations have a large mean.
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        use_fast_variance=False,
        rngs=rngs,
    )


def _dropout(layer: nnx.Dropout, x: jax.Array, *, deterministic: bool, rngs) -> jax.Array:
    """`layer` applied to x viewed as [batch, -1]: XLA:CPU compiles the random bits of a rank-4
    attention mask ~8x slower than of a rank-2 one, and keeping the batch axis keeps the mask
    sharded like the batch."""
    if deterministic:
        return x
    return layer(x.reshape(x.shape[0], -1), deterministic=False, rngs=rngs).reshape(x.shape)


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (HF BertEmbeddings).
    `layer_norm=False`: no LayerNorm (pre-LayerNorm XLM-R XL normalises inside each layer)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, layer_norm: bool = True):
        self.config = config
        std, pdt = config.initializer_range, jnp.dtype(config.param_dtype)
        # Lookups stay in param_dtype so the three-way sum is exact before the LayerNorm casts.
        self.word_embeddings = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=pdt,
            param_dtype=pdt,
            embedding_init=_normal_init(std, config.pad_token_id),
            rngs=rngs,
        )
        self.position_embeddings = nnx.Embed(
            config.max_position_embeddings,
            config.hidden_size,
            dtype=pdt,
            param_dtype=pdt,
            embedding_init=_normal_init(
                std, None if config.family == "bert" else config.pad_token_id
            ),
            rngs=rngs,
        )
        self.token_type_embeddings = nnx.Embed(
            config.type_vocab_size,
            config.hidden_size,
            dtype=pdt,
            param_dtype=pdt,
            embedding_init=_normal_init(std),
            rngs=rngs,
        )
        self.layer_norm = _layer_norm(config, rngs) if layer_norm else None
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs):
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids(self.config, input_ids))
            + self.token_type_embeddings(token_type_ids)
        )
        if self.layer_norm is None:  # the sum is in param_dtype: cast like the LayerNorm would
            x = x.astype(jnp.dtype(self.config.dtype))
        else:
            x = self.layer_norm(x)
        return _dropout(self.dropout, x, deterministic=deterministic, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention + output projection + residual + post-LayerNorm
    (HF BertAttention). Also returns the q/k/v projection outputs for relation distillation."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.query = _linear(config, d, d, rngs)
        self.key = _linear(config, d, d, rngs)
        self.value = _linear(config, d, d, rngs)
        self.output = _linear(config, d, d, rngs)
        self.layer_norm = _layer_norm(config, rngs)
        self.attention_dropout = nnx.Dropout(config.attention_dropout)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, x, mask, *, deterministic: bool, rngs):
        q, k, v = self.query(x), self.key(x), self.value(x)
        context = attention(
            q,
            k,
            v,
            mask,
            num_heads=self.num_heads,
            scale=self.head_dim**-0.5,
            dropout=None
            if deterministic
            else lambda p: _dropout(self.attention_dropout, p, deterministic=False, rngs=rngs),
        )
        out = _dropout(self.dropout, self.output(context), deterministic=deterministic, rngs=rngs)
        return self.layer_norm(out + x), (q, k, v)


class FeedForward(nnx.Module):
    """GELU feed-forward + residual + post-LayerNorm (HF BertIntermediate + BertOutput)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.intermediate = _linear(config, config.hidden_size, config.intermediate_size, rngs)
        self.output = _linear(config, config.intermediate_size, config.hidden_size, rngs)
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, x, *, deterministic: bool, rngs):
        h = jax.nn.gelu(self.intermediate(x), approximate=False)
        out = _dropout(self.dropout, self.output(h), deterministic=deterministic, rngs=rngs)
        return self.layer_norm(out + x)


class TransformerLayer(nnx.Module):
    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, mask, *, deterministic: bool, rngs):
        x, qkv = self.attention(x, mask, deterministic=deterministic, rngs=rngs)
        return self.feed_forward(x, deterministic=deterministic, rngs=rngs), qkv


class Pooler(nnx.Module):
    """tanh(dense(h[:, 0])) (HF BertPooler)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, rngs)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


def prepare_inputs(
    config,
    input_ids,
    attention_mask,
    token_type_ids,
    *,
    num_layers: int | None,
    deterministic: bool,
    rngs,
    max_length: int | None,
    dropout_rates: tuple[float, ...],
):
    """Checks the arguments of every family's encoder call (the common protocol) and returns
    ``(input_ids, attention_mask, token_type_ids, layers_to_run, rngs)`` as arrays and an
    ``nnx.Rngs`` (or None). ``token_type_ids`` default to zeros; ``max_length`` None means the
    family has no absolute position table that bounds the length."""
    n = config.num_layers if num_layers is None else num_layers
    if not (isinstance(n, int) and 1 <= n <= config.num_layers):
        raise ValueError(f"num_layers={num_layers!r}; must be an int in [1, {config.num_layers}]")
    input_ids = jnp.asarray(input_ids)
    attention_mask = jnp.asarray(attention_mask)
    token_type_ids = (
        jnp.zeros_like(input_ids) if token_type_ids is None else jnp.asarray(token_type_ids)
    )
    if (
        input_ids.ndim != 2
        or attention_mask.shape != input_ids.shape
        or token_type_ids.shape != input_ids.shape
    ):
        raise ValueError(
            f"input_ids {input_ids.shape}, attention_mask {attention_mask.shape} and "
            f"token_type_ids {token_type_ids.shape} must all be [batch, length]"
        )
    if max_length is not None and input_ids.shape[1] > max_length:
        raise ValueError(
            f"input length {input_ids.shape[1]} exceeds the {max_length} positions of this "
            f"{config.family} model"
        )
    if not deterministic and rngs is None and any(dropout_rates):
        raise ValueError(
            "deterministic=False applies dropout and needs rngs= (an nnx.Rngs with "
            "a 'dropout' stream, or a PRNG key)"
        )
    if isinstance(rngs, jax.Array):
        rngs = nnx.Rngs(dropout=rngs)
    return input_ids, attention_mask, token_type_ids, n, rngs


class Transformer(nnx.Module):
    """The encoder. Holds only parameters: dropout keys come in through `rngs` at call time,
    so `nnx.split(model)` state is exactly the parameters."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, add_pooler: bool = True):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List(
            [TransformerLayer(config, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.pooler = Pooler(config, rngs=rngs) if add_pooler else None

    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        num_layers: int | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        remat: str = "none",
    ) -> TransformerOutput:
        """Encodes a batch.

        Args:
          input_ids, attention_mask, token_type_ids: int [B, T]; attention_mask is 1 for real
            tokens and 0 for padding; token_type_ids default to zeros.
          num_layers: run only the first `num_layers` layers (a teacher needs nothing above its
            distillation layer). The pooler runs only when every layer ran.
          deterministic: False applies dropout, drawn from `rngs` (an `nnx.Rngs` with a
            'dropout' stream, or a PRNG key that seeds one).
          remat: "none" | "attention" | "layer": what the backward pass recomputes instead
            of keeping (`models.remat`); the outputs are the same.
        """
        cfg = self.config
        input_ids, attention_mask, token_type_ids, n, rngs = prepare_inputs(
            cfg,
            input_ids,
            attention_mask,
            token_type_ids,
            num_layers=num_layers,
            deterministic=deterministic,
            rngs=rngs,
            max_length=cfg.max_sequence_length,
            dropout_rates=(cfg.hidden_dropout, cfg.attention_dropout),
        )
        mask = attention_mask_of(attention_mask.astype(bool))
        h = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs)
        hidden_states, qkv = [h], []
        # remat: recompute each layer's activations in the backward pass (models.remat).
        run = layer_caller(remat, deterministic=deterministic)
        for i in range(n):
            h, layer_qkv = run(self.layers[i], h, mask, rngs=rngs)
            hidden_states.append(h)
            qkv.append(layer_qkv)
        pooled = self.pooler(h) if self.pooler is not None and n == cfg.num_layers else None
        return TransformerOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states),
            qkv=tuple(qkv),
            pooler_output=pooled,
        )


def last_layer_unreachable(
    path: tuple, num_layers: int, used: frozenset[str], *, pre_layer_norm: bool
) -> bool:
    """The frozen-set rule of every encoder family whose layers are named like ours
    (`layers.<i>.attention.{layer_norm,query,key,value,output}`, `layers.<i>.feed_forward.*`,
    `final_norm`, `pooler`): True for a parameter that a relation loss reading only the
    projections `used` (a subset of {"q", "k", "v"}) of the last layer cannot reach.

    Unreachable: in the last layer everything after the q/k/v projections (attention output,
    a post-attention LayerNorm, the feed-forward with its LayerNorm) and the projections not in
    `used`; the final LayerNorm and the pooler. With `pre_layer_norm` the last layer's
    `attention.layer_norm` normalises the projections' input, so it is reachable whenever any
    projection is used.
    """
    if path[0] in ("pooler", "final_norm"):
        return True
    if path[0] != "layers" or path[1] != num_layers - 1:
        return False
    if path[2] == "feed_forward":
        return True
    if path[3] == "layer_norm":
        return not (pre_layer_norm and used)
    projection = {"query": "q", "key": "k", "value": "v"}.get(path[3])
    return projection is None or projection not in used


def unreachable_param(path: tuple, num_layers: int, used: frozenset[str]) -> bool:
    """True for a parameter that a relation loss reading only the projections `used` (a subset
    of {"q", "k", "v"}) of the last layer cannot reach: in that layer everything after the
    q/k/v projections (attention output, its LayerNorm, the feed-forward), the projections
    not in `used`, and the pooler. `path` is the parameter's key path in `nnx.state(model)`."""
    return last_layer_unreachable(path, num_layers, used, pre_layer_norm=False)
