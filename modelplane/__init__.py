"""modelplane: shared foundation (version, settings, root error) and the CLI's composition root.

The four product packages (``kernels``, ``serving``, ``control_plane``, ``training``) import
only the leaf modules here (:mod:`modelplane.errors`, :mod:`modelplane.settings`);
:mod:`modelplane.cli` sits above all of them and assembles their command groups.
"""

from modelplane.errors import ConfigurationError, ModelplaneError
from modelplane.settings import Settings, get_settings

__version__ = "0.1.0"

__all__ = ["ConfigurationError", "ModelplaneError", "Settings", "__version__", "get_settings"]
