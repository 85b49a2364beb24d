"""Initial weights of a backbone: the one vocabulary every stage uses.

``init`` says where a run's backbone starts, ``weights`` names the file when there is one::

    init: random       torchvision's random initialisation; ``weights`` is not read
    init: imagenet     torchvision's ImageNet file at ``weights`` (e.g. resnet50-11ad3fa6.pth)
    init: checkpoint   a cxrkit ``backbone.pth`` or a pretrain ``.ckpt`` at ``weights``

Files are always local: cxrkit never downloads weights at run time (:data:`IMAGENET_FILES` says
where to get them once). A resumed run reads neither: its checkpoint holds every weight.
"""

from __future__ import annotations

from cxrkit.errors import ConfigError

INITS = ("random", "imagenet", "checkpoint")
# Where to get each ImageNet weights file (the user downloads it; we never do at run time).
IMAGENET_FILES = {
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
}


def check_init(init: str, *, key: str = "model.init") -> None:
    """Raise ValueError (a config's ``__post_init__`` turns it into a ConfigError) unless ``init``
    is one of :data:`INITS`."""
    if init not in INITS:
        raise ValueError(f"{key} must be one of {INITS}, got {init!r}")


def weights_file(*, init: str, weights: str | None, prefix: str = "model.") -> str | None:
    """The file ``init`` reads: None for ``random``, else ``weights``.

    Args:
        prefix: where the two keys sit in the config, for the message (``"model."`` or ``""``).

    Raises:
        ConfigError: ``imagenet`` or ``checkpoint`` without a file; the message says which file.
    """
    check_init(init, key=f"{prefix}init")
    if init == "random":
        return None
    if not weights:
        hint = (
            f"torchvision's ImageNet ResNet-50 file ({IMAGENET_FILES['resnet50']})"
            if init == "imagenet"
            else "a backbone.pth or .ckpt of a previous `cxrkit pretrain` run"
        )
        raise ConfigError(
            f"{prefix}init={init} needs {prefix}weights=PATH: {hint}; or {prefix}init=random"
        )
    return str(weights)
