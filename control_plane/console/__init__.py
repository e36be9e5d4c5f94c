"""The web console: page shells and their assets, served by the control plane under ``/ui``.

Every page is a shell with no data in it; its script asks the REST API for everything it
shows and sends every action there, with the token the person signed in with (kept in the
browser's ``sessionStorage``). So the console is public (control_plane/api/access.py
declares its routes for anyone) and the API authorizes each call exactly as it does the
CLI's. Assets ship in this package; nothing is fetched from outside the platform.
"""

from control_plane.console.pages import PAGES, install_console

__all__ = ["PAGES", "install_console"]
