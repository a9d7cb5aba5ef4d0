"""OFA's public ImageNet accuracy predictors, batched."""
from __future__ import annotations

import numpy as np
import torch

from blockprof.common.assets import load_torch_asset
from blockprof.common.errors import UserError
from blockprof.core.space import DesignSpace, MBConvSpace, ResNetSpace, SlotEncoding
from blockprof.metrics.base import Metric


class OFAAccuracyPredictor(Metric):
    """OFA's public ImageNet top-1 predictors (MobileNetV3 w1.2; ResNet50), in %.

    Features are built for the whole batch at once from the slot encoding, in the
    exact layout OFA's encoders use, and the MLP runs once over the batch.
    """
    name, unit, higher_is_better = "accuracy", "%", True
    MBV3_RES = (112, 128, 144, 160, 176, 192, 208, 224)
    RESNET_RES = (128, 144, 160, 176, 192, 224, 240, 256)

    def __init__(self, space: DesignSpace, explicit_path: str | None = None):
        self.space = space
        if isinstance(space, MBConvSpace) and space.name == "mbv3" and space.width_mult == 1.2:
            sd = load_torch_asset("ofa/acc_predictor.pth", explicit_path=explicit_path)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1))
            self.net.load_state_dict(sd)
            self.base, self.res_list = 0.0, self.MBV3_RES
        elif isinstance(space, ResNetSpace):
            sd = load_torch_asset("ofa/ofa_resnet50_acc_predictor.pth", explicit_path=explicit_path)
            sd = sd.get("state_dict", sd)
            layers = []
            for i in range(3):
                layers += [torch.nn.Linear(82 if i == 0 else 400, 400), torch.nn.ReLU()]
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(400, 1, bias=False))
            # OFA nests each hidden layer in its own Sequential: layers.{i}.0.* -> flat index
            flat = {}
            for k, v in sd.items():
                if k == "base_acc":
                    continue
                parts = k.split(".")
                idx = int(parts[1]) * 2 if len(parts) == 4 else 6
                flat[f"{idx}.{parts[-1]}"] = v
            self.net.load_state_dict(flat)
            self.base, self.res_list = float(sd["base_acc"].reshape(-1)[0]), self.RESNET_RES
        else:
            raise UserError(f"no public accuracy predictor for space '{space.name}' "
                            "(OFA published them for mbv3 at width 1.2 and resnet50); "
                            "use metric.accuracy.source=supernet or drop accuracy from the metrics")
        for r in space.resolutions:
            if r not in self.res_list:
                raise UserError(f"the {space.name} accuracy predictor knows resolutions {list(self.res_list)}, not {r}")
        self.net.eval()
        self._res_map = np.array([self.res_list.index(r) for r in space.resolutions])

    def features(self, enc: SlotEncoding) -> np.ndarray:
        n = len(enc.res)
        if isinstance(self.space, ResNetSpace):
            return self._resnet_features(enc)
        S = enc.choice.shape[1]
        x = np.zeros((n, 128), dtype=np.float32)
        rows, slots = np.nonzero(enc.choice >= 0)
        b = enc.choice[rows, slots].astype(np.intp)
        x[rows, slots * 3 + b % 3] = 1  # kernel one-hot
        x[rows, 3 * S + slots * 3 + b // 3] = 1  # expand one-hot
        x[np.arange(n), 6 * S + self._res_map[enc.res]] = 1
        return x

    def _resnet_features(self, enc):
        sp: ResNetSpace = self.space
        n = len(enc.res)
        x = np.zeros((n, 82), dtype=np.float32)
        ar = np.arange(n)
        x[ar, self._res_map[enc.res]] = 1
        stem = enc.choice[:, 0].astype(np.intp)
        d = np.array(sp.stem_depths)[stem // 9]
        x[ar, 8 + (d > 0)] = 1
        # six width one-hots of 3: stem conv 0, stem conv 1, then units 1-4
        x[ar, 10 + (stem // 3) % 3] = 1
        x[ar, 13 + stem % 3] = 1
        for u in range(1, 5):  # a unit's width = w_out of its first layer
            first = enc.choice[:, sp.slot_offsets[u]].astype(np.intp)
            x[ar, 10 + 3 * (u + 1) + first % 3] = 1
        rows, slots = np.nonzero(enc.choice[:, 1:] >= 0)
        e_idx = enc.choice[rows, slots + 1] // 9
        x[rows, 28 + slots * 3 + e_idx] = 1
        return x

    @torch.no_grad()
    def evaluate(self, archs):
        x = torch.from_numpy(self.features(self.space.encode(archs)))
        return (self.net(x).reshape(-1).numpy().astype(np.float64) + self.base) * 100.0

