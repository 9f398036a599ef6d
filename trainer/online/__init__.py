"""Continuous EmbedMe training from the `training-examples` stream (issue 6)."""
