"""sd-scripts' bucket arithmetic: library/model_util.py make_bucket_resolutions and train_util.BucketManager."""

from __future__ import annotations

import math


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int, max_size: int,
                            divisible: int) -> list[tuple[int, int]]:
    """library/model_util.py make_bucket_resolutions."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


class Buckets:
    """BucketManager.select_bucket: the bucket resolution each image lands in."""

    def __init__(self, no_upscale: bool, max_reso: tuple[int, int], min_size: int | None, max_size: int | None,
                 steps: int | None, predefined: list[tuple[int, int]] | None = None) -> None:
        self.no_upscale, self.steps = no_upscale, steps
        self.max_area = max_reso[0] * max_reso[1]
        if predefined is None and not no_upscale:
            predefined = make_bucket_resolutions(max_reso, min_size, max_size, steps)
        self.resos = predefined or []
        self.reso_set = set(self.resos)
        self.ratios = [w / h for w, h in self.resos]

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[int, int]:
        aspect = width / height
        if not self.no_upscale:
            if (width, height) in self.reso_set:
                return (width, height)
            errors = [abs(r - aspect) for r in self.ratios]
            return self.resos[errors.index(min(errors))]  # numpy argmin: the first minimum
        if width * height > self.max_area:
            rw = math.sqrt(self.max_area * aspect)
            rh = self.max_area / rw
            bw = self._round(rw)
            bh_w = self._round(bw / aspect)
            ar_w = bw / bh_w
            bh = self._round(rh)
            bw_h = self._round(bh * aspect)
            ar_h = bw_h / bh
            resized = (bw, int(bw / aspect + 0.5)) if abs(ar_w - aspect) < abs(ar_h - aspect) \
                else (int(bh * aspect + 0.5), bh)
        else:
            resized = (width, height)
        return (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
