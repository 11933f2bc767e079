"""Errors both sides of the torch boundary raise or catch: the model catalogue, the sources and the
pipeline (torch) raise them; the command line, the job queue and the web server (torch-free) catch
them. Torch-free, and it imports nothing of convscope, so any module can import it."""

from __future__ import annotations


class ModelError(Exception):
    """A model that cannot be built or loaded; the message says what is wrong and how to fix it."""
