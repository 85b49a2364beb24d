"""Initial weights of a backbone: the one vocabulary every stage uses.

``init`` says where a run's backbone starts, ``weights`` names the file when there is one::

    init: random       torchvision's random initialisation; ``weights`` is not read
    init: imagenet     torchvision's ImageNet file at ``weights`` (e.g. resnet50-11ad3fa6.pth)
    init: checkpoint   a cxrkit ``backbone.pth`` or a pretrain ``.ckpt`` at ``weights``

Files are always local: cxrkit never downloads weights at run time (:data:`IMAGENET_FILES` says
where to get them once). ``init: imagenet`` without ``weights`` takes torchvision's file from the
user's torch cache (``$TORCH_HOME/hub/checkpoints``, where torchvision's own download puts it) when
exactly one known file is there. A resumed run reads neither: its checkpoint holds every weight.
"""

from __future__ import annotations

from pathlib import Path

from cxrkit.errors import ConfigError

INITS = ("random", "imagenet", "checkpoint")
# Where to get each ImageNet weights file (the user downloads it; we never do at run time).
IMAGENET_FILES = {
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
}

# torchvision's file names per architecture, as its downloads name them in the torch cache:
# ResNet-50 IMAGENET1K_V2 (80.9 % top-1) and IMAGENET1K_V1 (76.1 %, the file mmcv's
# torchvision://resnet50 and most detection papers used); DenseNet-121 IMAGENET1K_V1.
KNOWN_FILES = {
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    "densenet121": ("densenet121-a639ec97.pth",),
}


def torch_cache_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints`` (follows
    ``$TORCH_HOME`` and ``$XDG_CACHE_HOME``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_imagenet_file(arch: str) -> list[Path]:
    """The known ImageNet files of ``arch`` present in the torch cache (:func:`torch_cache_dir`)."""
    folder = torch_cache_dir()
    return [folder / name for name in KNOWN_FILES.get(arch, ()) if (folder / name).is_file()]


def check_init(init: str, *, key: str = "model.init") -> None:
    """Raise ValueError (a config's ``__post_init__`` turns it into a ConfigError) unless ``init``
    is one of :data:`INITS`."""
    if init not in INITS:
        raise ValueError(f"{key} must be one of {INITS}, got {init!r}")


def weights_file(
    *, init: str, weights: str | None, prefix: str = "model.", arch: str = "resnet50"
) -> str | None:
    """The file ``init`` reads: None for ``random``, else ``weights``; for ``imagenet`` without
    ``weights``, the one known file of ``arch`` in the torch cache.

    Args:
        prefix: where the two keys sit in the config, for the message (``"model."`` or ``""``).
        arch: the architecture whose torchvision files :data:`KNOWN_FILES` lists.

    Raises:
        ConfigError: ``checkpoint`` without a file; ``imagenet`` without a file and none (or more
            than one) in the torch cache. The message says which file and where it may go.
    """
    check_init(init, key=f"{prefix}init")
    if init == "random":
        return None
    if weights:
        return str(weights)
    if init == "imagenet":
        found = cached_imagenet_file(arch)
        if len(found) == 1:
            return str(found[0])
        if found:
            raise ConfigError(
                f"{prefix}init=imagenet: the torch cache holds {len(found)} ImageNet {arch} files "
                f"({', '.join(p.name for p in found)}); say which with {prefix}weights=PATH"
            )
        hint = (
            f"torchvision's ImageNet {arch} file ({IMAGENET_FILES.get(arch, KNOWN_FILES[arch][0])}"
            f"), or put it in {torch_cache_dir()}"
        )
    else:
        hint = "a backbone.pth or .ckpt of a previous `cxrkit pretrain` run"
    raise ConfigError(
        f"{prefix}init={init} needs {prefix}weights=PATH: {hint}; or {prefix}init=random"
    )
