"""sagebuild: turn matrix.yaml into Dockerfiles, a docker-bake.hcl and tested wheels.

Modules (one concern each, pure functions where possible, side effects at the edges):

* ``errors``  -- :class:`SagebuildError` (user errors, exit code 2) with file/line/field context
* ``compat``  -- facts: which PyTorch ships which CUDA builds, Python ranges, GPU arch minimums
* ``matrix``  -- pydantic models of ``matrix.yaml``, loading with precise errors, expansion to targets
* ``naming``  -- target/group names, PEP 440 local versions, wheel file names
* ``render``  -- jinja2 rendering of ``templates/`` into ``docker/`` + ``docker-bake.hcl``, drift check
* ``cli``     -- the typer app (``sagebuild matrix``, ``sagebuild render``, ...)
"""

__version__ = "0.1.0"
