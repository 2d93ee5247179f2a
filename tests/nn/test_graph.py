"""Coupled unit groups read from the jaxpr (sparsejax.nn.coupled_groups)."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sparsejax.nn._graph import GroupMember, coupled_groups
from tests._models import Concat, ConvResidual, Residual


def _as_sets(groups, removable=True):
    """Each group as a frozenset of (path, axis, index) triples."""
    return {
        frozenset((m.path, m.axis, i) for m in g.members for i in m.indices)
        for g in groups
        if g.removable == removable
    }


def _unit(i, *pairs):
    return frozenset((path, axis, i) for path, axis in pairs)


def test_residual_add_couples_every_writer_and_reader():
    groups = coupled_groups(Residual(nnx.Rngs(0)), jnp.ones((2, 3)))
    stream = ("a/kernel", 1), ("a/bias", 0), ("b2/kernel", 1), ("b2/bias", 0), ("b/kernel", 0)
    stream += (("c/kernel", 0),)
    inner = ("b/kernel", 1), ("b/bias", 0), ("b2/kernel", 0)
    expected = {_unit(i, *stream) for i in range(4)} | {_unit(i, *inner) for i in range(5)}
    assert _as_sets(groups) == expected
    # the model output units are fixed by the data
    assert _as_sets(groups, False) == {_unit(i, ("c/kernel", 1), ("c/bias", 0)) for i in range(2)}


def test_concatenation_maps_units_to_their_rows():
    groups = coupled_groups(Concat(nnx.Rngs(0)), jnp.ones((2, 3)))
    expected = {
        frozenset({("a/kernel", 1, i), ("a/bias", 0, i), ("c/kernel", 0, i)}) for i in range(2)
    } | {
        frozenset({("b/kernel", 1, i), ("b/bias", 0, i), ("c/kernel", 0, 2 + i)}) for i in range(3)
    }
    assert _as_sets(groups) == expected


class _Heads(nnx.Module):
    """Attention written by hand: one Dense for q/k/v, heads by reshape, a split, softmax."""

    def __init__(self, rngs, heads=2, head_dim=3):
        d = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nnx.Linear(4, 3 * d, rngs=rngs)
        self.out = nnx.Linear(d, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)

    def __call__(self, x):
        b, s, _ = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)), 3, axis=-1)
        q, k, v = (t.reshape(b, s, self.heads, self.head_dim) for t in (q, k, v))
        w = jax.nn.softmax(jnp.einsum("bshd,bthd->bhst", q, k), axis=-1)
        o = jnp.einsum("bhst,bthd->bshd", w, v).reshape(b, s, -1)
        return x + self.out(o)


def test_a_head_is_one_group_with_its_output_rows():
    heads, hd = 2, 3
    d = heads * hd
    groups = coupled_groups(_Heads(nnx.Rngs(0), heads, hd), jnp.ones((1, 5, 4)))
    removable = _as_sets(groups)
    for h in range(heads):
        cols = [part * d + h * hd + j for part in range(3) for j in range(hd)]
        head = {("qkv/kernel", 1, c) for c in cols} | {("qkv/bias", 0, c) for c in cols}
        head |= {("out/kernel", 0, h * hd + j) for j in range(hd)}
        assert frozenset(head) in removable
    assert len(removable) == heads  # the residual stream is tied to the input: not removable
    fixed = _as_sets(groups, False)
    assert any(("norm/scale", 0, 0) in g and ("out/bias", 0, 0) in g for g in fixed)


def test_nnx_multi_head_attention_gives_heads_and_head_dims():
    mha = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0)
    )
    removable = _as_sets(coupled_groups(mha, jnp.ones((1, 3, 8))))
    head0 = {(f"{n}/kernel", 1, 0) for n in ("query", "key", "value")}
    head0 |= {(f"{n}/bias", 0, 0) for n in ("query", "key", "value")} | {("out/kernel", 0, 0)}
    qk_dim0 = {(f"{n}/kernel", 2, 0) for n in ("query", "key")}
    qk_dim0 |= {(f"{n}/bias", 1, 0) for n in ("query", "key")}
    vo_dim0 = {("value/kernel", 2, 0), ("value/bias", 1, 0), ("out/kernel", 1, 0)}
    assert {frozenset(head0), frozenset(qk_dim0), frozenset(vo_dim0)} <= removable
    assert len(removable) == 2 + 4 + 4


class _Convs(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.dw = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs)
        self.g2 = nnx.Conv(4, 4, (1, 1), feature_group_count=2, rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c1(x))
        h = nnx.avg_pool(self.g2(self.dw(h)), (2, 2), (2, 2))
        return self.fc(h.reshape(h.shape[0], -1))


def test_depthwise_and_grouped_conv_and_flatten():
    removable = _as_sets(coupled_groups(_Convs(nnx.Rngs(0)), jnp.ones((1, 8, 8, 1))))
    # g2 has 2 groups of 2 channels: channels {0,1} and {2,3} of c1, dw and g2 are one group
    # each; the flatten maps channel c to the fc rows p*4 + c of the 16 positions
    for g in range(2):
        chans = (2 * g, 2 * g + 1)
        unit = {("c1/kernel", 3, c) for c in chans} | {("c1/bias", 0, c) for c in chans}
        unit |= {("dw/kernel", 3, c) for c in chans} | {("dw/bias", 0, c) for c in chans}
        unit |= {("g2/kernel", 3, c) for c in chans} | {("g2/bias", 0, c) for c in chans}
        unit |= {("fc/kernel", 0, p * 4 + c) for p in range(16) for c in chans}
        assert frozenset(unit) in removable
    assert len(removable) == 2


class _Tied(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(7, 3, rngs=rngs)
        self.mid = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        h = h + jax.nn.gelu(self.mid(h))
        return self.embed.attend(h)


def test_embedding_and_tied_output_projection():
    groups = coupled_groups(_Tied(nnx.Rngs(0)), jnp.zeros((2, 5), jnp.int32))
    removable = _as_sets(groups)
    # an embedding column is tied to the residual stream it feeds, to the mid layer's rows and
    # outputs, and (tied weights) to the same column used by the output projection ``attend``
    assert removable == {
        frozenset(
            {("embed/embedding", 1, i), ("mid/kernel", 0, i), ("mid/kernel", 1, i)}
            | {("mid/bias", 0, i)}
        )
        for i in range(3)
    }
    # the vocabulary axis is the model output: fixed
    fixed = _as_sets(groups, False)
    assert {frozenset({("embed/embedding", 0, v)}) for v in range(7)} == fixed


def test_linen_model_with_variables():
    class Mlp(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2, name="out")(jax.nn.relu(linen.Dense(3, name="hid")(x)))

    model = Mlp()
    variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    removable = _as_sets(coupled_groups(model, jnp.ones((1, 4)), variables))
    assert removable == {
        frozenset(
            {("params/hid/kernel", 1, i), ("params/hid/bias", 0, i), ("params/out/kernel", 0, i)}
        )
        for i in range(3)
    }
    with pytest.raises(ValueError, match="variables=None"):
        coupled_groups(model, jnp.ones((1, 4)))


def test_unknown_primitive_is_refused_by_name():
    class Odd(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return jnp.fft.fft(self.a(x)).real

    with pytest.raises(ValueError, match="'fft'"):
        coupled_groups(Odd(nnx.Rngs(0)), jnp.ones((1, 4)))


def test_member_indices_are_sorted_tuples():
    groups = coupled_groups(Residual(nnx.Rngs(0)), jnp.ones((1, 3)))
    assert all(
        isinstance(m, GroupMember) and list(m.indices) == sorted(m.indices)
        for g in groups
        for m in g.members
    )


def test_reads_marks_the_input_rows_of_each_unit():
    groups = coupled_groups(Residual(nnx.Rngs(0)), jnp.ones((1, 3)))
    reads = {(m.path, m.axis) for g in groups if g.removable for m in g.members if m.reads}
    assert reads == {("b/kernel", 0), ("c/kernel", 0), ("b2/kernel", 0)}
    mha = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0)
    )
    heads = [g for g in coupled_groups(mha, jnp.ones((1, 3, 8))) if g.removable]
    reads = {(m.path, m.axis) for g in heads for m in g.members if m.reads}
    assert reads == {("out/kernel", 0), ("out/kernel", 1)}


@pytest.mark.parametrize("train", [True, False])
def test_conv_residual_block_with_batchnorm(train):
    model = ConvResidual(nnx.Rngs(0))
    if not train:
        model.eval()
    removable = _as_sets(coupled_groups(model, jnp.ones((2, 6, 6, 1))))
    norm = ("bias", "scale", "mean", "var")
    stream = [("stem/kernel", 3), ("stem/bias", 0), ("c2/kernel", 3), ("c2/bias", 0)]
    stream += [(f"bn{k}/{n}", 0) for k in (0, 2) for n in norm]
    stream += [("c1/kernel", 2), ("fc/kernel", 0)]
    inner = [("c1/kernel", 3), ("c1/bias", 0), ("c2/kernel", 2)] + [(f"bn1/{n}", 0) for n in norm]
    assert removable == {_unit(i, *stream) for i in range(4)} | {_unit(i, *inner) for i in range(6)}
