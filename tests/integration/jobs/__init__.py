"""A package, so that the ``package`` scope of the job head (conftest.py) ends with these
tests: without this file the nearest package is ``tests`` and the head idles to the end of
the session."""
