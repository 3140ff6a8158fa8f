"""The one error type a stage raises for a bad asset: it names the asset and the reason."""

from __future__ import annotations


class AssetError(Exception):
    """A problem with one asset that no retry will fix (bad file, bad mesh, ...)."""

    def __init__(self, asset: str, stage: str, reason: str) -> None:
        super().__init__(f"{asset}: {stage}: {reason}")
        self.asset = asset
        self.stage = stage
        self.reason = reason


class AssetWarning(UserWarning):
    """Not a failure: the asset is done, with something its owner should know (a tiny photo).

    A stage yields it in place of None; the warnings go to the run's output, the
    asset's stamp and, for the cutout, the index's manifest.
    """

    def __init__(self, asset: str, stage: str, warnings: list[str]) -> None:
        super().__init__(f"{asset}: {stage}: {'; '.join(warnings)}")
        self.asset = asset
        self.stage = stage
        self.warnings = warnings
