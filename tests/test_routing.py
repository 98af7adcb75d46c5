"""Tests of jaxdef.transforms.routed_switch against lax.switch, and of its cost."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdef.transforms import _routing
from jaxdef.transforms import routed_switch
from jaxdef.transforms import with_output_pullback

KEY = jax.random.key(0)
ROWS = 37  # not a multiple of any chunk size


def _branches():
  return (lambda key, x: x * 2.0,
          lambda key, x: jnp.sin(x) + jax.random.normal(key, x.shape),
          lambda key, x: x ** 3 - x)


def _routed(index, key, x):
  return routed_switch(index, _branches(), key, x)


def _switched(index, key, x):
  return jax.lax.switch(index, _branches(), key, x)


def _inputs(shape=(ROWS,), branches=3, seed=1):
  index = jax.random.randint(jax.random.key(seed), shape, 0, branches)
  keys = jax.random.split(jax.random.key(seed + 1), shape)
  x = jax.random.uniform(jax.random.key(seed + 2), shape + (5,))
  return index, keys, x


def test_vmapped_routed_switch_equals_lax_switch():
  index, keys, x = _inputs()
  routed = jax.jit(jax.vmap(_routed))(index, keys, x)
  np.testing.assert_allclose(routed, jax.vmap(_switched)(index, keys, x), rtol=1e-6, atol=1e-6)


def test_nested_vmaps_fold_into_one_routing():
  index, keys, x = _inputs(shape=(4, ROWS))
  nested = lambda f: jax.vmap(jax.vmap(f))
  np.testing.assert_allclose(jax.jit(nested(_routed))(index, keys, x),
                             nested(_switched)(index, keys, x), rtol=1e-6, atol=1e-6)


def test_unbatched_call_and_out_of_range_index_clamp_like_lax_switch():
  x = jnp.linspace(0, 1, 5)
  for index in (-3, 0, 1, 2, 7):
    np.testing.assert_array_equal(_routed(index, KEY, x), _switched(index, KEY, x))


def test_gradients_in_every_nesting_equal_lax_switch():
  """grad(vmap), vmap(grad) and the EOT pattern vmap(grad(vmap)) with shared images."""
  index, keys, x = _inputs()
  batch_loss = lambda f: (lambda x: (jax.vmap(f)(index, keys, x) ** 2).sum())
  np.testing.assert_allclose(jax.jit(jax.grad(batch_loss(_routed)))(x),
                             jax.grad(batch_loss(_switched))(x), rtol=1e-5, atol=1e-6)
  row_loss = lambda f: (lambda i, k, x: (f(i, k, x) ** 2).sum())
  per_row = lambda f: jax.vmap(jax.grad(row_loss(f), argnums=2))
  np.testing.assert_allclose(jax.jit(per_row(_routed))(index, keys, x),
                             per_row(_switched)(index, keys, x), rtol=1e-5, atol=1e-6)

  def eot(f):
    def one_draw(draw_key):
      row_keys = jax.random.split(draw_key, ROWS)
      return jax.grad(lambda x: (jax.vmap(f)(index, row_keys, x) ** 2).sum())(x)
    return jax.vmap(one_draw)(jax.random.split(KEY, 3))

  np.testing.assert_allclose(jax.jit(lambda: eot(_routed))(), eot(_switched), rtol=1e-5,
                             atol=1e-6)


def test_branches_may_close_over_per_row_values_and_differentiate_them():
  """A closed-over traced value (a per-image parameter under vmap) is routed with its row."""
  def make(switch):
    def one_row(i, x, scale, key):
      return switch(i, (lambda x: x * scale, lambda x: x + scale * jax.random.normal(key, ())),
                    x)
    return one_row

  index, keys, x = _inputs(shape=(11,))
  scale = jnp.linspace(1.0, 2.0, 11)
  routed = jax.jit(jax.vmap(make(routed_switch)))(index, x, scale, keys)
  switched = jax.vmap(make(jax.lax.switch))(index, x, scale, keys)
  np.testing.assert_allclose(routed, switched, rtol=1e-6)
  loss = lambda f: (lambda s: (jax.vmap(make(f))(index, x, s, keys) ** 2).sum())
  np.testing.assert_allclose(jax.jit(jax.grad(loss(routed_switch)))(scale),
                             jax.grad(loss(jax.lax.switch))(scale), rtol=1e-5)


def test_pytree_operands_and_outputs_with_integer_leaves():
  branches = (lambda d: {"y": d["x"] + d["n"], "z": d["x"].sum()},
              lambda d: {"y": d["x"] * d["n"], "z": -d["x"].sum()})
  index = jnp.array([0, 1, 1, 0, 1])
  data = {"x": jnp.arange(10.0).reshape(5, 2), "n": jnp.arange(5)}
  # Jitted: eagerly, each of the routing's ops would compile on its own.
  routed = jax.jit(jax.vmap(lambda i, d: routed_switch(i, branches, d)))(index, data)
  switched = jax.vmap(lambda i, d: jax.lax.switch(i, branches, d))(index, data)
  jax.tree_util.tree_map(np.testing.assert_array_equal, routed, switched)
  grad = jax.jit(jax.grad(lambda x: jax.vmap(lambda i, d: routed_switch(i, branches, d)["z"])(
      index, {"x": x, "n": data["n"]}).sum()))(data["x"])
  np.testing.assert_array_equal(grad, np.where(np.asarray(index)[:, None] == 0, 1.0, -1.0)
                                * np.ones((5, 2)))


def _scaled_exp_pullback(key, x, output, cotangent, *, scale=1.0):
  # exp's derivative is its output; `scale` != 1 makes the pullback's use visible.
  return None, scale * cotangent * output


def test_an_output_pullback_replaces_recomputing_its_branch():
  """Rows of a `with_output_pullback` branch get its pullback; the others are differentiated."""
  index, keys, x = _inputs()
  plain = _branches()
  loss = lambda branches: (lambda x: (jax.vmap(
      lambda i, k, x: routed_switch(i, branches, k, x))(index, keys, x) ** 2).sum())
  exp = lambda key, x: jnp.exp(x)
  want = jax.grad(loss(plain[:2] + (exp,)))(x)
  exact = with_output_pullback(exp, _scaled_exp_pullback)
  np.testing.assert_allclose(jax.jit(jax.grad(loss(plain[:2] + (exact,))))(x), want, rtol=1e-5)
  # Through a functools.partial binding the pullback's options: doubled on exp's rows only.
  doubling = functools.partial(with_output_pullback(
      lambda key, x, scale: jnp.exp(x), _scaled_exp_pullback), scale=2.0)
  doubled = np.asarray(jax.jit(jax.grad(loss(plain[:2] + (doubling,))))(x))
  on_exp = np.asarray(index) == 2
  np.testing.assert_allclose(doubled[on_exp], 2 * np.asarray(want)[on_exp], rtol=1e-5)
  np.testing.assert_allclose(doubled[~on_exp], np.asarray(want)[~on_exp], rtol=1e-5)
  assert exact(KEY, x[0]).shape == x[0].shape  # outside routing: the branch itself


def test_an_output_pullback_is_not_used_for_a_branch_closing_over_row_values():
  """A per-row value the branch closes over is routed as an operand it cannot differentiate."""
  index, keys, x = _inputs(shape=(11,))
  offset = jnp.linspace(0.0, 1.0, 11)

  def loss(wrap):
    def row(i, k, x, o):
      shifted_exp = wrap(lambda key, x: jnp.exp(x + o))
      return routed_switch(i, (lambda key, x: x * o, shifted_exp), k, x)
    return lambda o: (jax.vmap(row)(index, keys, x, o) ** 2).sum()

  wrong = lambda branch: with_output_pullback(
      branch, functools.partial(_scaled_exp_pullback, scale=0.0))
  np.testing.assert_allclose(jax.jit(jax.grad(loss(wrong)))(offset),
                             jax.grad(loss(lambda b: b))(offset), rtol=1e-5)


def test_an_output_pullback_returning_the_wrong_count_is_named():
  bad = with_output_pullback(lambda key, x: jnp.exp(x), lambda key, x, out, ct: ct)
  index, keys, x = _inputs(shape=(4,))
  with pytest.raises(TypeError, match="must return a tuple of 2 cotangents"):
    jax.grad(lambda x: jax.vmap(lambda i, k, x: routed_switch(i, _branches()[:1] + (bad,), k, x))(
        index % 2, keys, x).sum())(x)


@pytest.mark.parametrize("rows,num_branches", [(8, 4), (64, 6), (200, 3)])
def test_each_row_runs_only_its_own_branch_in_chunks(rows, num_branches):
  """Branch b sees its own rows, in ceil(count_b / c) chunks of c rows; nothing else runs."""
  seen = {b: [] for b in range(num_branches)}

  def marking(b):
    def branch(x):
      jax.debug.callback(lambda v: seen[b].extend(np.asarray(v).ravel().tolist()), x[0])
      return x + b
    return branch

  branches = tuple(marking(b) for b in range(num_branches))
  index = np.random.default_rng(rows).integers(0, num_branches, rows)
  markers = jnp.arange(rows, dtype=jnp.float32)[:, None]  # row r carries r
  out = jax.jit(jax.vmap(lambda i, x: routed_switch(i, branches, x)))(jnp.asarray(index), markers)
  np.testing.assert_array_equal(out[:, 0], np.arange(rows) + index)
  chunk = _routing.chunk_rows(rows, num_branches)
  for b in range(num_branches):
    own = set(np.flatnonzero(index == b).tolist())
    assert own <= set(seen[b]), b
    # Unfilled slots of a branch's last chunk hold a copy of row 0.
    assert set(seen[b]) <= own | {0}, b
    assert len(seen[b]) == -(-len(own) // chunk) * chunk, b
  total = sum(len(v) for v in seen.values())
  assert total <= rows + (num_branches - 1) * chunk


def test_mismatched_branch_outputs_are_named():
  branches = (lambda x: x, lambda x: x[:1])
  with pytest.raises(TypeError, match="routed_switch branches must return the same shapes"):
    jax.vmap(lambda i, x: routed_switch(i, branches, x))(jnp.array([0, 1]), jnp.zeros((2, 3)))


@pytest.mark.parametrize("index,branches,message", [
    (0, (), "branches must be a non-empty sequence of callables"),
    (0, (1, 2), "branches must be a non-empty sequence of callables"),
    (0.5, (abs, abs), "index must be an integer scalar"),
    (jnp.array([0, 1]), (abs, abs), "index must be an integer scalar"),
])
def test_bad_arguments_are_named(index, branches, message):
  with pytest.raises(TypeError, match=message):
    routed_switch(index, branches, jnp.zeros(3))


def test_single_branch_is_called_directly():
  assert float(routed_switch(5, (lambda x: x + 1,), jnp.float32(1))) == 2.0
