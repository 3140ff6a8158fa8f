"""The one error type a stage raises for a bad asset: it names the asset and the reason."""

from __future__ import annotations


class AssetError(Exception):
    """A problem with one asset that no retry will fix (bad file, bad mesh, ...)."""

    def __init__(self, asset: str, stage: str, reason: str) -> None:
        super().__init__(f"{asset}: {stage}: {reason}")
        self.asset = asset
        self.stage = stage
        self.reason = reason
