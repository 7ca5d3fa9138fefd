"""Any pytorch-grad-cam CAM as a method: ``method=grad_cam_lib method.grad_cam_lib.cam=ScoreCAM``.

Optional extra: ``pip install "salbench[grad_cam]"`` (the ``grad-cam`` package). For each call
it builds ``pytorch_grad_cam.<cam>(model, target_layers=[...], **init)`` and returns exactly
what ``cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target], **kwargs)``
returns, as a tensor [B, H, W] on ``x``'s device.

* ``cam``: GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM, ScoreCAM, AblationCAM, EigenCAM,
  EigenGradCAM, LayerCAM, GradCAMElementWise, KPCA_CAM, FullGrad, RandomCAM, ... (every
  ``BaseCAM`` subclass the installed version exports);
* ``layer``: the target layer's name, or a list of names (pytorch-grad-cam averages their maps);
  ``layer=null``: the model bundle's target layer, else the feature map feeding the global pooling;
* ``init``: further constructor keywords; ``batch_size`` (ScoreCAM, AblationCAM: masked inputs
  per forward) is set as the attribute the library reads; ``kwargs``: keywords of the call
  (``aug_smooth``, ``eigen_smooth``).

Post-processing: pytorch-grad-cam applies its own, inside the library and not removable: ReLU,
per-image min-max at layer resolution, cv2 bilinear resize to the input size, mean over the
layers, min-max again (recorded as ``library_postprocess`` in the options). salbench's named
steps come after it (default: none; the map is already at input size). The library's hooks are
released and the model's mode (it calls ``model.eval()``), ``requires_grad`` and ``.grad`` (its
``backward`` fills them) are restored after every call, also one that raised. Its code assumes
CPU as torch's default device, so the call runs with that default.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs
from salbench.methods.hooks import default_target_layer, find_module, preserved_model_state
from salbench.methods.postprocess import Postprocess

LIBRARY_POSTPROCESS = ("pytorch-grad-cam: ReLU, per-image min-max at layer resolution, cv2 bilinear resize to the "
                       "input, mean over layers, per-image min-max")


def grad_cam_classes() -> Dict[str, type]:
    """{name: class} of the CAMs the installed pytorch-grad-cam exports."""
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.base_cam import BaseCAM
    except ImportError:
        raise ImportError("method grad_cam_lib needs pytorch-grad-cam: pip install 'salbench[grad_cam]'") from None
    return {name: cls for name in dir(pytorch_grad_cam) if inspect.isclass(cls := getattr(pytorch_grad_cam, name))
            and issubclass(cls, BaseCAM) and cls is not BaseCAM}


@register_method("grad_cam_lib")
class GradCamLibrary(Explainer):
    """pytorch-grad-cam's ``cam`` (module docstring); ``attribute`` returns what the library
    returns, as a tensor [B, H, W] on ``x``'s device."""

    name = "grad_cam_lib"
    default_postprocess = Postprocess(relu=False, channel_reduction="none", upsample="bilinear")

    def __init__(self, model: nn.Module, *, cam: str = "GradCAM", layer: Optional[Union[str, List[str]]] = None,
                 init: Optional[Dict[str, Any]] = None, kwargs: Optional[Dict[str, Any]] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        classes = grad_cam_classes()
        if cam not in classes:
            from salbench.harness.registry import UnknownNameError

            raise UnknownNameError("pytorch-grad-cam CAM", cam, classes)
        self.cam, self._cls = cam, classes[cam]
        self.layer = list(layer) if isinstance(layer, (list, tuple)) else layer
        for name in [self.layer] if isinstance(self.layer, str) else self.layer or []:
            find_module(model, name)  # fail early with the candidates listed
        self.init, self.kwargs = dict(init or {}), dict(kwargs or {})

    def options(self) -> Dict[str, Any]:
        return {**super().options(), "library_postprocess": LIBRARY_POSTPROCESS}

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> the library's maps [B, H, W] (float32, on x's device)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        target = check_inputs(x, target)
        if self.layer is None:
            self.layer = default_target_layer(self.model, x)
        names = [self.layer] if isinstance(self.layer, str) else list(self.layer)
        layers = [find_module(self.model, name) for name in names]
        init = dict(self.init)
        batch_size = init.pop("batch_size", None)
        with preserved_model_state(self.model), torch.device("cpu"):
            explainer = self._cls(self.model, target_layers=layers, **init)
            try:
                if batch_size is not None:
                    explainer.batch_size = int(batch_size)
                with torch.enable_grad():
                    maps = explainer(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target.tolist()],
                                     **self.kwargs)
            finally:
                explainer.activations_and_grads.release()
        return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).to(x.device)
