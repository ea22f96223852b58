"""The project's own exception types: each message says what went wrong and what to do."""


class RapidPoseError(Exception):
    """Base class of every error a user can cause."""


class InputError(RapidPoseError):
    """An image, video, box or file given by the user cannot be used."""


class CheckpointError(RapidPoseError):
    """A model file is missing, corrupt, or not a ViTPose checkpoint."""


class DownloadError(RapidPoseError):
    """A named model or detector could not be fetched from its hub."""


class MissingDependencyError(RapidPoseError):
    """An optional extra (torch, openvino, ...) is needed but not installed."""


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        missing = getattr(exc, "name", None)
        why = ("is not installed" if missing in (None, module) or module.startswith(f"{missing}.")
               else f"could not be imported ({exc}): a package it needs is missing or of the wrong version")
        raise MissingDependencyError(
            f"'{module}' is needed for this but {why}: run pip install 'rapidpose[{extra}]'"
        ) from exc


def check_choice(what: str, value, choices) -> None:
    """An InputError naming the bad `value` of `what` and the choices, unless value is one of them."""
    if value not in choices:
        raise InputError(f"unknown {what} '{value}': use one of {', '.join(map(str, choices))}")
