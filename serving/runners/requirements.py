"""How a version's pip requirements are installed, the same for the registration check
and for the replicas' runtime environment: wheels only (a source package would run its
own build code on the machine), no prompts."""

PIP_OPTIONS = ("--no-input", "--disable-pip-version-check", "--quiet", "--only-binary=:all:")
