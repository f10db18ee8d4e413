"""Errors the kernel raises at users and plugin authors."""

from __future__ import annotations


class EsperError(Exception):
    """Base of every error Esper raises on purpose."""


class PluginError(EsperError):
    """A lever plugin failed to load, declared something invalid, or broke a hook.

    The message always names the lever and its distribution so the user knows
    which package to blame.
    """


class SelectionError(EsperError):
    """The user asked for levers that are not installed or not loadable."""


class MaskError(PluginError):
    """A mask had the wrong shape, or left a decision with no legal choice."""


class Terminated(BaseException):
    """The process got SIGTERM: raised where it was, so open streams and files are closed properly.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it.
    """
