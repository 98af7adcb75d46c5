"""`routed_switch`: `lax.switch` that stays a real branch under `jax.vmap`.

Under `jax.vmap` a `lax.switch` whose index differs between batch rows turns
into a select: every branch runs on every row and the unwanted results are
thrown away. BaRT (one of kappa transforms per image and position), noise
injection (one of six kinds per image) and median blur (one of six kernel
sizes per image) all pay that price: a BaRT-6 draw cost about 36 transform
evaluations instead of 6.

`routed_switch` has `lax.switch`'s meaning, but when vmapped it routes rows
to branches the way mixture-of-experts layers route tokens to experts:

1. the rows (all vmapped axes flattened into one, however deeply nested) are
   sorted by branch index;
2. each branch's rows are cut into chunks of `c` rows; the chunks form a
   fixed-length list of work items (at most ceil(N / c) + K - 1 for N rows
   and K branches, padding items doing nothing), so no row is ever dropped
   and no shape depends on the data;
3. a `lax.map` over the items runs one branch per item (a scalar
   `lax.switch`, a real branch) on its gathered rows, and the results are
   scattered back to their rows.

A row therefore costs one evaluation of its own branch, plus at most K - 1
padded chunks per call. Everything is gathers, a loop and scatters: the same
program is the fast one on a CPU and on a GPU.

Gradients: reverse mode (`jax.grad`, `jax.vjp`) is supported through a
custom VJP whose backward pass routes the rows again, to each branch's own
VJP (recomputing that branch's forward pass: no residuals of unused
branches are stored). A branch whose gradient needs only its operands and
its output can skip that recomputation: see `with_output_pullback`.
Forward mode (`jax.jvp`) is not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

# Rows per work item: about N / (4 K) keeps the padding (at most K - 1 items)
# under a quarter of the rows, and large chunks amortise the loop overhead.
_PADDING_SHARE = 4


def chunk_rows(num_rows: int, num_branches: int) -> int:
  """Rows per work item for `num_rows` rows over `num_branches` branches (>= 1)."""
  return max(1, num_rows // (_PADDING_SHARE * num_branches))


def with_output_pullback(branch: Callable[..., Any],
                         pullback: Callable[..., tuple[Any, ...]]) -> Callable[..., Any]:
  """`branch`, with a backward pass for `routed_switch` that reads its output.

  `routed_switch`'s backward pass normally recomputes each row's branch to
  differentiate it. A branch whose gradient follows from its operands and
  its output alone (a median blur's goes to the input pixels equal to the
  output) can give that gradient directly: the router then keeps the
  branch's output from the forward pass and calls `pullback` instead. Used
  outside `routed_switch`, the returned function is `branch` itself.

  Args:
    branch: ``branch(*operands) -> output``.
    pullback: ``pullback(*operands, output, cotangent, **options) ->
      cotangents``: a tuple with one entry per operand, its cotangent (same
      structure) or None for an operand with no floating-point leaves (a
      PRNG key). `options` are the keyword arguments a `functools.partial`
      of the returned function binds.

  Returns:
    A callable equal to `branch`, carrying `pullback`.
  """
  if not callable(branch) or not callable(pullback):
    raise TypeError(f"branch and pullback must be callables, got {branch!r} and {pullback!r}")

  @functools.wraps(branch)
  def call(*operands, **options):
    return branch(*operands, **options)

  call.output_pullback = pullback
  return call


def routed_switch(index: Any, branches: Sequence[Callable[..., Any]], *operands: Any) -> Any:
  """Applies ``branches[index](*operands)``; under vmap each row runs only its branch.

  Same meaning as ``jax.lax.switch(index, branches, *operands)`` (an index
  outside [0, K) is clamped), but when the call is vmapped (per image, per
  EOT draw, per vote, in any nesting) the rows are routed to their branches
  instead of every branch running on every row; see the module docstring.

  Args:
    index: integer scalar (may be traced), the branch to apply.
    branches: K >= 1 callables taking `operands` and returning outputs of one
      common structure, shape and dtype. Each is traced once for one row and
      then evaluated on chunks of rows with `jax.vmap`, so it must be
      vmappable. A branch may close over traced values (a per-image
      parameter under vmap): they are routed with their rows.
    *operands: arrays (PRNG keys included) passed to the chosen branch.

  Returns:
    The chosen branch's output.
  """
  branches = tuple(branches)
  if not branches or not all(callable(b) for b in branches):
    raise TypeError(f"branches must be a non-empty sequence of callables, got {branches!r}")
  if len(branches) == 1:
    return branches[0](*operands)
  if np.ndim(index) != 0 or not jnp.issubdtype(jnp.result_type(index), jnp.integer):
    raise TypeError(f"index must be an integer scalar, got {index!r}")
  leaves, treedef = jax.tree_util.tree_flatten(operands)
  raw, key_impls = _raw_keys([jnp.asarray(leaf) for leaf in leaves])

  def per_row(branch):
    def call(*row_leaves):
      return branch(*jax.tree_util.tree_unflatten(treedef, _wrapped_keys(row_leaves, key_impls)))
    return call

  specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in raw]
  traced = [jax.make_jaxpr(per_row(b), return_shape=True)(*specs) for b in branches]
  out_shapes = _common_output([shape for _, shape in traced])
  # A value a branch closes over from an enclosing trace (a per-image
  # parameter under vmap, say) varies with the row: it becomes an operand.
  hoisted, row_branches = [], []
  for closed, shape in traced:
    positions = [(i, len(hoisted) + n) for n, i in enumerate(
        i for i, value in enumerate(closed.consts) if isinstance(value, jax.core.Tracer))]
    hoisted += [closed.consts[i] for i, _ in positions]
    row_branches.append(_evaluating(closed, positions, len(raw),
                                    jax.tree_util.tree_structure(shape)))
  hoisted_raw, hoisted_impls = _raw_keys(hoisted)
  rewrapped = [_rewrapping(b, len(raw), hoisted_impls) for b in row_branches]
  all_leaves = raw + hoisted_raw
  # A branch that closes over per-row values is differentiated by recomputing.
  out_tree = jax.tree_util.tree_structure(out_shapes)
  output_pullbacks = tuple(
      _leaf_pullback(pullback, treedef, key_impls, len(raw), len(all_leaves), out_tree)
      if pullback is not None and not any(
          isinstance(value, jax.core.Tracer) for value in closed.consts) else None
      for pullback, (closed, _) in zip(map(_output_pullback_of, branches), traced))
  router = _Router(tuple(rewrapped), tuple(leaf.dtype for leaf in all_leaves), out_shapes,
                   output_pullbacks)
  one_row = router(jnp.asarray(index, jnp.int32)[None], *[leaf[None] for leaf in all_leaves])
  return jax.tree_util.tree_map(lambda out: out[0], one_row)


def _evaluating(closed, positions, num_leaves, out_tree):
  """``(*row_leaves, *hoisted) -> output``: the traced branch with its hoisted values."""

  def call(*args):
    consts = list(closed.consts)
    for const_index, hoisted_index in positions:
      consts[const_index] = args[num_leaves + hoisted_index]
    return jax.tree_util.tree_unflatten(
        out_tree, jax.core.eval_jaxpr(closed.jaxpr, consts, *args[:num_leaves]))

  return call


def _output_pullback_of(branch: Callable[..., Any]) -> Callable[..., Any] | None:
  """The `with_output_pullback` pullback of `branch`, through `functools.partial`s; or None."""
  if isinstance(branch, functools.partial):
    inner = _output_pullback_of(branch.func)
    return None if inner is None else functools.partial(inner, *branch.args, **branch.keywords)
  return getattr(branch, "output_pullback", None)


def _leaf_pullback(pullback, treedef, key_impls, num_operand_leaves, num_leaves, out_tree):
  """A `with_output_pullback` pullback on leaves.

  Returns ``(*leaves, *output_leaves, *cotangent_leaves) -> cotangents``, one
  per leaf (raw PRNG keys and hoisted values included, zeros where the
  pullback gives None or does not reach).
  """

  def call(*args):
    leaves, rest = args[:num_leaves], args[num_leaves:]
    output = jax.tree_util.tree_unflatten(out_tree, rest[:len(rest) // 2])
    cotangent = jax.tree_util.tree_unflatten(out_tree, rest[len(rest) // 2:])
    operands = jax.tree_util.tree_unflatten(
        treedef, _wrapped_keys(leaves[:num_operand_leaves], key_impls))
    cotangents = pullback(*operands, output, cotangent)
    if not isinstance(cotangents, tuple) or len(cotangents) != len(operands):
      raise TypeError(f"an output pullback must return a tuple of {len(operands)} cotangents "
                      f"(one per operand, None for none), got {cotangents!r}")
    flat = []
    for operand, operand_cotangent in zip(operands, cotangents):
      operand_leaves = _raw_keys(jax.tree_util.tree_leaves(operand))[0]
      flat += ([jnp.zeros_like(leaf) for leaf in operand_leaves] if operand_cotangent is None
               else jax.tree_util.tree_leaves(operand_cotangent))
    return flat + [jnp.zeros_like(leaf) for leaf in leaves[num_operand_leaves:]]

  return call


def _rewrapping(branch, num_leaves, impls):
  """Hoisted PRNG keys travel as raw data (like the operands); rewrap them for the branch."""

  def call(*args):
    return branch(*args[:num_leaves], *_wrapped_keys(args[num_leaves:], impls))

  return call


def _raw_keys(values: Sequence[Any]) -> tuple[list[Any], list[Any]]:
  """Typed PRNG keys as their raw uint32 data, and each value's key impl (None: not a key).

  Keys travel raw so that custom_vjp and custom_vmap only ever see plain arrays.
  """
  impls = [jax.random.key_impl(value) if _is_key(value) else None for value in values]
  raw = [jax.random.key_data(value) if impl is not None else value
         for value, impl in zip(values, impls)]
  return raw, impls


def _wrapped_keys(values: Sequence[Any], impls: Sequence[Any]) -> list[Any]:
  """Undoes `_raw_keys`."""
  return [jax.random.wrap_key_data(value, impl=impl) if impl is not None else value
          for value, impl in zip(values, impls)]


def _common_output(outputs: Sequence[Any]) -> Any:
  """The branches' one output structure (ShapeDtypeStructs); a mismatch is named."""
  first = outputs[0]
  for number, other in enumerate(outputs[1:], start=1):
    same = jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(first) and all(
        (a.shape, a.dtype) == (b.shape, b.dtype) for a, b in
        zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(first)))
    if not same:
      raise TypeError(f"routed_switch branches must return the same shapes and dtypes: "
                      f"branch 0 returns {first}, branch {number} returns {other}")
  return first


def _is_key(leaf: Any) -> bool:
  return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _differentiable(dtype: Any) -> bool:
  return jnp.issubdtype(dtype, jnp.inexact)


class _Router:
  """The row-level routed function with its vmap and VJP rules.

  ``router(index, *leaves)``: index int32 (N,), each leaf (N, ...); returns
  the branch outputs stacked over the N rows.
  """

  def __init__(self, branches: tuple[Callable[..., Any], ...], dtypes: tuple[Any, ...],
               out_shapes: Any, output_pullbacks: tuple[Callable[..., Any] | None, ...]):
    self.branches = branches
    self.num_leaves = len(dtypes)
    self.float_leaves = tuple(i for i, d in enumerate(dtypes) if _differentiable(d))
    # Outputs are kept for the backward pass only if a branch reads them.
    self.keeps_output = any(p is not None for p in output_pullbacks)
    self.backward_branches = tuple(self._pullback(b, p) for b, p in zip(branches, output_pullbacks))

    forward = custom_vmap(
        lambda index, *leaves: _route(index, self.branches, leaves, out_shapes))
    forward.def_vmap(_flattened(lambda *args: self.__call__(*args)))
    backward = custom_vmap(lambda index, *leaves: _route(
        index, self.backward_branches, leaves, self._gradient_shapes(leaves)))
    backward.def_vmap(_flattened(lambda *args: self.backward(*args)))
    self.forward, self.backward = forward, backward

    routed = jax.custom_vjp(forward)
    routed.defvjp(self._fwd, self._bwd)
    self.routed = routed

  def __call__(self, index: jax.Array, *leaves: jax.Array) -> Any:
    return self.routed(index, *leaves)

  def _fwd(self, index, *leaves):
    out = self.forward(index, *leaves)
    kept = tuple(jax.tree_util.tree_leaves(out)) if self.keeps_output else ()
    return out, (index, leaves, kept)

  def _bwd(self, residuals, cotangent):
    index, leaves, kept = residuals
    cotangent_leaves = jax.tree_util.tree_leaves(cotangent)
    # One gradient per float leaf.
    grads = list(self.backward(index, *leaves, *kept, *cotangent_leaves))
    result = [np.zeros(index.shape, jax.dtypes.float0)]
    for i, leaf in enumerate(leaves):
      result.append(grads.pop(0) if i in self.float_leaves
                    else np.zeros(leaf.shape, jax.dtypes.float0))
    return tuple(result)

  def _gradient_shapes(self, leaves: Sequence[jax.Array]) -> tuple[jax.ShapeDtypeStruct, ...]:
    """One row's gradients: one per float leaf (the leaves here are rows x ...)."""
    return tuple(jax.ShapeDtypeStruct(leaves[i].shape[1:], leaves[i].dtype)
                 for i in self.float_leaves)

  def _pullback(self, branch: Callable[..., Any],
                output_pullback: Callable[..., Any] | None) -> Callable[..., Any]:
    """``(*leaves, *kept_outputs, *cotangent_leaves) -> gradients of the float leaves``, one row.

    `kept_outputs` (the branch output's leaves) are there only if
    `self.keeps_output`; the pullback reads them if it is an output pullback.
    """
    float_leaves, num_leaves, keeps_output = self.float_leaves, self.num_leaves, self.keeps_output

    def pullback(*args):
      leaves, rest = list(args[:num_leaves]), args[num_leaves:]
      if output_pullback is not None:
        cotangents = output_pullback(*leaves, *rest)
        return tuple(cotangents[i] for i in float_leaves)
      cotangent_leaves = rest[len(rest) // 2:] if keeps_output else rest

      def of_floats(*floats):
        full = list(leaves)
        for i, value in zip(float_leaves, floats):
          full[i] = value
        return branch(*full)

      out, vjp = jax.vjp(of_floats, *[leaves[i] for i in float_leaves])
      cotangent = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out),
                                               list(cotangent_leaves))
      return tuple(vjp(cotangent))

    return pullback


def _flattened(call: Callable[..., Any]) -> Callable[..., Any]:
  """A custom_vmap rule: fold the vmapped axis into the row axis and call again."""

  def rule(axis_size, in_batched, *args):
    args = [arg if batched else jnp.broadcast_to(arg, (axis_size,) + arg.shape)
            for arg, batched in zip(args, in_batched)]
    out = call(*[arg.reshape((-1,) + arg.shape[2:]) for arg in args])
    out = jax.tree_util.tree_map(lambda o: o.reshape((axis_size, -1) + o.shape[1:]), out)
    return out, jax.tree_util.tree_map(lambda _: True, out)

  return rule


def _route(index: jax.Array, branches: tuple[Callable[..., Any], ...],
           leaves: Sequence[jax.Array], row_output: Any) -> Any:
  """Runs ``branches[index[r]]`` on row r of `leaves`, each branch on its rows only.

  `row_output`: the branches' output for one row (ShapeDtypeStructs).
  """
  num_rows, num_branches = index.shape[0], len(branches)
  index = jnp.clip(index, 0, num_branches - 1)
  if num_rows == 1:  # one row: a plain switch is already a real branch
    one = [leaf[0] for leaf in leaves]
    out = jax.lax.switch(index[0], branches, *one)
    return jax.tree_util.tree_map(lambda o: o[None], out)

  chunk = chunk_rows(num_rows, num_branches)
  order = jnp.argsort(index, stable=True)
  counts = jnp.zeros(num_branches, jnp.int32).at[index].add(1)
  starts = jnp.cumsum(counts) - counts
  chunks = (counts + chunk - 1) // chunk
  chunk_ends = jnp.cumsum(chunks)
  # sum_b ceil(count_b / c) < N / c + K, so this many items always suffice.
  num_items = -(-num_rows // chunk) + num_branches - 1
  item = jnp.arange(num_items)
  item_branch = jnp.searchsorted(chunk_ends, item, side="right")  # K: padding
  branch = jnp.minimum(item_branch, num_branches - 1)
  within = (item - (chunk_ends[branch] - chunks[branch]))[:, None] * chunk + jnp.arange(chunk)
  valid = (item_branch[:, None] < num_branches) & (within < counts[branch][:, None])
  rows = jnp.where(valid, order[jnp.clip(starts[branch][:, None] + within, 0, num_rows - 1)], 0)
  gathered = [leaf[rows] for leaf in leaves]  # (items, chunk, ...)

  chunked = [jax.vmap(b) for b in branches]
  padding = lambda *_: jax.tree_util.tree_map(
      lambda spec: jnp.zeros((chunk,) + spec.shape, spec.dtype), row_output)

  def run_item(args):
    which, *chunk_leaves = args
    return jax.lax.switch(which, chunked + [padding], *chunk_leaves)

  results = jax.lax.map(run_item, (item_branch, *gathered))
  # Padded slots scatter to distinct out-of-range rows, which are dropped.
  flat_valid = valid.reshape(-1)
  target = jnp.where(flat_valid, rows.reshape(-1), num_rows + jnp.arange(flat_valid.shape[0]))

  def scatter(result):
    flat = result.reshape((-1,) + result.shape[2:])
    return jnp.zeros((num_rows,) + flat.shape[1:], flat.dtype).at[target].set(
        flat, mode="drop", unique_indices=True)

  return jax.tree_util.tree_map(scatter, results)
