"""Checks of an INSTALLED sageattention wheel, run inside the test image by ``sagebuild test``
(``python -c <gpucode.py + this file> --json '{...}'``): standard library + torch only, no
``from __future__`` import (the two sources are concatenated).

A plain ``import sageattention`` is no proof: the established package swallows a failed kernel
import and fails later with "kernel is not available". So this checks, and prints one JSON
report (exit 1 when any check failed):

* the installed distribution's version and its ``Requires-Dist`` on torch;
* torch's version and CUDA build are the target's;
* the compiled extension (``sageattention/_C*.so``) is installed, and loads: through the
  package's own probe when it has one (``extension_loaded()`` / ``_C``), else
  ``torch.ops.load_library`` on the file;
* the extension holds machine code (a cubin) for every architecture of the arch list.
"""

import json
import os
import sys
import traceback

try:  # as a module of the sagebuild package
    from buildtool.gpucode import missing_archs, so_archs  # noqa: F401
except ImportError:  # concatenated after gpucode.py's source inside the test image
    pass


def _check(report, name, ok, detail=""):
    report["checks"].append({"check": name, "ok": bool(ok), "detail": str(detail)})
    return ok


def run(expect):
    """``expect``: package, version, torch (2.11.0), torch_cuda (13.0), torch_requirement,
    arch_list. Returns the report (``ok`` false when a check failed)."""
    from importlib import metadata

    report = {"checks": [], "python": sys.version.split()[0]}
    pkg = expect["package"]
    try:
        dist = metadata.distribution(pkg)
    except metadata.PackageNotFoundError:
        _check(report, "installed", False, "%s is not installed" % pkg)
        report["ok"] = False
        return report
    _check(report, "version", dist.version == expect["version"],
           "installed %s, expected %s" % (dist.version, expect["version"]))
    torch_reqs = [r for r in (dist.requires or []) if r.split(";")[0].replace(" ", "").lower().startswith("torch")
                  and not r.lower().startswith("torchvision")]
    want_req = expect["torch_requirement"].replace(" ", "")
    _check(report, "requires torch", [r.replace(" ", "") for r in torch_reqs] == [want_req],
           "Requires-Dist %s, expected %s" % (torch_reqs, want_req))

    import torch

    report["torch"] = torch.__version__
    report["torch_cuda"] = torch.version.cuda
    _check(report, "torch version", torch.__version__.split("+")[0] == expect["torch"],
           "torch %s, expected %s" % (torch.__version__, expect["torch"]))
    _check(report, "torch CUDA build", (torch.version.cuda or "") == expect["torch_cuda"],
           "torch.version.cuda %s, expected %s" % (torch.version.cuda, expect["torch_cuda"]))

    files = [f for f in (dist.files or []) if str(f).endswith(".so")]
    exts = [f for f in files if os.path.basename(str(f)).startswith("_C")]
    if not _check(report, "extension installed", exts,
                  ", ".join(str(f) for f in exts) or "no sageattention/_C*.so in the installed files"):
        report["ok"] = False
        return report
    paths = [str(f.locate()) for f in exts]
    report["extension"] = paths

    try:
        mod = __import__(pkg.replace("-", "_"))
        _check(report, "import", True, getattr(mod, "__file__", ""))
    except Exception:
        _check(report, "import", False, traceback.format_exc(limit=3))
        mod = None
    probe = None
    if mod is not None:
        for attr in ("extension_loaded", "_extension_loaded", "is_extension_loaded"):
            fn = getattr(mod, attr, None)
            if callable(fn):
                probe = attr
                try:
                    value = fn()
                    ok = bool(value[0] if isinstance(value, tuple) else value)
                    _check(report, "extension loads (%s())" % attr, ok, value)
                except Exception:
                    _check(report, "extension loads (%s())" % attr, False, traceback.format_exc(limit=3))
                break
    for path in paths:  # the file itself must load, whatever the package says
        try:
            torch.ops.load_library(path)
            _check(report, "load_library %s" % os.path.basename(path), True)
        except Exception as exc:
            _check(report, "load_library %s" % os.path.basename(path), False, exc)
    report["probe"] = probe

    found = set()
    for path in paths:
        try:
            with open(path, "rb") as fh:
                found |= so_archs(fh.read())
        except Exception as exc:  # not an ELF file, truncated, ...
            _check(report, "read GPU code of %s" % os.path.basename(path), False, exc)
    report["gpu_code"] = sorted(str(c) for c in found)
    missing = missing_archs(found, expect["arch_list"])
    _check(report, "machine code for arch list %s" % expect["arch_list"], not missing,
           "missing %s; holds %s" % (", ".join(map(str, missing)) or "nothing",
                                     ", ".join(sorted(str(c) for c in found)) or "nothing"))
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    expect = json.loads(argv[argv.index("--json") + 1])
    report = run(expect)
    print("SAGEBUILD-REPORT " + json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
