"""Errors a user can cause; the CLIs print their message in one line and exit non-zero."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or written as asked; the message says why and what to do."""
