"""A space class from outside blockprof: OFA-ProxylessNAS without a pretrained supernet
(as a family someone trained themselves would be), so accuracy must come from elsewhere."""
from __future__ import annotations

from blockprof.core.families.mbconv import ProxylessSpace
from blockprof.core.space import Capabilities


class UntrainedProxylessSpace(ProxylessSpace):
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(accuracy_predictor=None, supernet_checkpoint=None)
