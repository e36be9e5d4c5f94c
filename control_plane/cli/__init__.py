"""The control plane's command groups, assembled by :mod:`modelplane.cli`."""
