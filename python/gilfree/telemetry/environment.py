"""Where the code runs (HyperNodes' ``telemetry.environment``)."""


def is_jupyter() -> bool:
    """True inside IPython or Jupyter (a running IPython shell), else False."""
    import sys

    ipython = sys.modules.get("IPython")  # not imported by us: only if the shell did
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except AttributeError:
        return False
