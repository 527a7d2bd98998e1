"""The errors frobnolab raises for bad input. Each is a ValueError, so the command line prints its one line and
exits with status 2."""


class UnknownNameError(ValueError):
    """A lookup of a name that is not there (a hook point, a concept, a feature, a preset, a ground-truth column).

    The message names what was asked for and what is known."""


def unknown(kind: str, name, known, where: str = "") -> UnknownNameError:
    """``unknown hook point 'enc9' in runs/x/store (known: enc0, enc1)``."""
    known = list(known)
    shown = ", ".join(map(str, known[:40])) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
    return UnknownNameError(f"unknown {kind} {name!r}{' in ' + where if where else ''} (known: {shown or 'none'})")
