"""Checkpoints: model weights + ModelSpec + training state in one ``.pt`` file."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from edgeseg import zoo
from edgeseg._io import atomic_path
from edgeseg.errors import EdgesegError
from edgeseg.spec import ModelSpec

CHECKPOINT_FORMAT = "edgeseg-checkpoint-v1"


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    model_kwargs: dict[str, Any] | None = None,
    **state: Any,
) -> None:
    """Write ``path`` atomically; ``state`` holds resumable training state (optimizer, epoch...)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if getattr(model, "edgeseg_pruned", False):
        # Channel counts differ from the registry's architecture: record each module's plain
        # attributes (in/out channels, groups, num_features...); the weights' shapes are in the
        # state dict. Both are safe for weights_only loading.
        attrs = {
            name: {k: v for k, v in vars(m).items() if not k.startswith("_") and _plain(v)}
            for name, m in model.named_modules()
        }
        state = {**state, "pruned": {"attributions": attrs}}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": spec.arch,
        "model_kwargs": model_kwargs or {},
        "spec": spec.to_dict(),
        "state_dict": model.state_dict(),
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _plain(v: Any) -> bool:
    """Values weights_only loading accepts (module attributes that point at modules are dropped:
    the architecture rebuilds those references itself)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict (a path, or a shipped model's name: :mod:`edgeseg.zoo`), turning
    every way it can be wrong into one clear message."""
    path = zoo.resolve(path, "checkpoint")
    if not path.is_file():
        raise EdgesegError(
            f"checkpoint not found: {path}; pass the path of a .pt written by 'edgeseg train'"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise EdgesegError(
            f"{path} is not a readable edgeseg checkpoint ({type(e).__name__}); "
            "re-run 'edgeseg train' or pass the right file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EdgesegError(
            f"{path} is a PyTorch file but not an edgeseg checkpoint; "
            "pass a best.pt or last.pt written by 'edgeseg train'"
        )
    kinds = {"arch": str, "spec": dict, "state_dict": dict}
    broken = [k for k, kind in kinds.items() if not isinstance(ckpt.get(k), kind)]
    if broken:
        raise EdgesegError(
            f"{path} is an incomplete edgeseg checkpoint (no valid {', '.join(broken)}); "
            "re-run 'edgeseg train' or pass the right file"
        )
    return ckpt


def build_model(ckpt: dict[str, Any], num_classes: int, raw: bool = False) -> nn.Module:
    """The checkpoint's network with its weights (``raw``: the non-averaged training weights)."""
    from edgeseg.models import create_model

    model = create_model(ckpt["arch"], num_classes, **ckpt.get("model_kwargs", {}))
    weights = ckpt["raw_state_dict"] if raw and "raw_state_dict" in ckpt else ckpt["state_dict"]
    if "pruned" in ckpt:
        _reshape_to(model, weights, ckpt["pruned"]["attributions"])
    model.load_state_dict(weights)
    return model


def _reshape_to(
    model: nn.Module, weights: dict[str, torch.Tensor], attributions: dict[str, dict]
) -> None:
    """Give a freshly built model the pruned structure: attributes, then parameter/buffer shapes."""
    modules = dict(model.named_modules())
    for name, attrs in attributions.items():
        if name in modules:
            for k, v in attrs.items():
                setattr(modules[name], k, v)
    for key, tensor in weights.items():
        owner, _, leaf = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            continue
        if (
            leaf in m._parameters
            and m._parameters[leaf] is not None
            and m._parameters[leaf].shape != tensor.shape
        ):
            m._parameters[leaf] = nn.Parameter(torch.empty_like(tensor))
        elif (
            leaf in m._buffers
            and m._buffers[leaf] is not None
            and m._buffers[leaf].shape != tensor.shape
        ):
            m._buffers[leaf] = torch.empty_like(tensor)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode; returns ``(model, spec, checkpoint)``.

    ``arch``, when given, must match the checkpoint's architecture.
    """

    ckpt = read_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"], origin=str(path))
    if arch is not None and arch != ckpt["arch"]:
        raise EdgesegError(
            f"{path} holds a '{ckpt['arch']}' model, not '{arch}'; "
            f"pass --model {ckpt['arch']} or a checkpoint of '{arch}'"
        )
    try:
        model = build_model(ckpt, spec.num_classes)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise EdgesegError(
            f"{path}: weights do not fit architecture '{ckpt['arch']}' ({first[:200]}); "
            "the file was written by a different model definition"
        ) from None
    return model.to(device).eval(), spec, ckpt
