"""A user's defense named by import path: ``"package.module:function"``."""

from __future__ import annotations

import importlib
from typing import Any

from jaxdef.defenses._core import Defense


def from_factory(path: str, **params: Any) -> Defense:
  """Imports ``package.module:function``, calls it with `params`, returns the defense.

  The function must return a callable ``(key, images) -> images`` (or a
  `Defense`); it is named by its path and `params` in records.

  Raises:
    ValueError: a malformed path, a module that cannot be imported, or a
      missing attribute (each message names the path).
    TypeError: the attribute is not callable, refuses `params`, or returns
      something that is not a callable defense.
  """
  if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
    raise ValueError(f"a defense factory is named 'package.module:function', got {path!r}")
  module_name, attribute = path.split(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ValueError(f"defense factory {path!r}: cannot import {module_name!r} ({error})"
                     ) from None
  factory = getattr(module, attribute, None)
  if factory is None:
    raise ValueError(f"defense factory {path!r}: module {module_name!r} has no "
                     f"{attribute!r}")
  if not callable(factory):
    raise TypeError(f"defense factory {path!r} is an object of type "
                    f"{type(factory).__name__!r}, not a function")
  try:
    built = factory(**params)
  except TypeError as error:
    raise TypeError(f"defense factory {path!r} refused the parameters {params}: {error}"
                    ) from None
  if isinstance(built, Defense):
    return built
  if not callable(built):
    raise TypeError(f"defense factory {path!r} returned an object of type "
                    f"{type(built).__name__!r}, not a callable (key, images) -> images")
  return Defense(built, name=path, params=params)
