"""sd-scripts' bucket arithmetic: BaseDataset.adjust_min_max_bucket_reso_by_steps, library/model_util.py
make_bucket_resolutions and train_util.BucketManager.select_bucket.

sd-scripts divides by zero on some of its inputs (a min_bucket_reso that rounds down to 0, a no-upscale bucket
with a side below bucket_reso_steps). The replay here never raises: it returns no resolutions, or a bucket with
a 0 side, exactly where sd-scripts would crash, and the step plan turns that into a failure that says why.
"""

from __future__ import annotations

import math


def adjust_min_max(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """BaseDataset.adjust_min_max_bucket_reso_by_steps: min rounded down, max rounded up to multiples of `steps`."""
    if min_reso % steps:
        min_reso -= min_reso % steps
    if max_reso % steps:
        max_reso += steps - max_reso % steps
    return min_reso, max_reso


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int, max_size: int,
                            divisible: int) -> list[tuple[int, int]]:
    """library/model_util.py make_bucket_resolutions; [] where sd-scripts divides by zero (a min_size or step of
    0 or less) or takes the square root of a negative area."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    if min_size < 1 or divisible < 1 or max_area < 0:
        return []
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def unusable(bucket: tuple[int, int]) -> bool:
    """A bucket with a side of 0 px: sd-scripts divides by its height while it makes the buckets
    (ZeroDivisionError), and an image cropped to a 0-px width fails when it is first loaded."""
    return bucket[0] < 1 or bucket[1] < 1


class Buckets:
    """BucketManager.select_bucket: the bucket resolution each image lands in."""

    def __init__(self, no_upscale: bool, max_reso: tuple[int, int], min_size: int | None, max_size: int | None,
                 steps: int | None, predefined: list[tuple[int, int]] | None = None) -> None:
        self.no_upscale, self.steps = no_upscale, steps or 0
        self.max_area = max_reso[0] * max_reso[1]
        if predefined is None and not no_upscale:
            predefined = make_bucket_resolutions(max_reso, min_size or 0, max_size or 0, self.steps)
        self.resos = predefined or []
        self.reso_set = set(self.resos)
        self.ratios = [w / h if h else math.inf for w, h in self.resos]

    def select(self, width: int, height: int) -> tuple[int, int]:
        """The bucket of a width x height image; a bucket with a 0 side where sd-scripts crashes on it."""
        if width < 1 or height < 1 or self.steps < 1:
            return (0, 0)
        if not self.no_upscale:
            if (width, height) in self.reso_set:
                return (width, height)
            if not self.resos:
                return (0, 0)
            aspect = width / height
            errors = [abs(r - aspect) for r in self.ratios]
            return self.resos[errors.index(min(errors))]  # numpy argmin: the first minimum
        resized = self._shrunk(width, height) if width * height > self.max_area else (width, height)
        return (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def _shrunk(self, width: int, height: int) -> tuple[int, int]:
        """select_bucket without upscaling, for an image above the area: the side that keeps the aspect ratio
        best is rounded to steps. (0, 0) where sd-scripts divides by a side that rounded down to 0."""
        if self.max_area < 1:
            return (0, 0)
        aspect = width / height
        rw = math.sqrt(self.max_area * aspect)
        rh = self.max_area / rw
        bw = self._round(rw)
        bh_w = self._round(bw / aspect)
        bh = self._round(rh)
        if bh_w == 0 or bh == 0:  # b_width_rounded / b_height_in_wr, b_width_in_hr / b_height_rounded
            return (0, 0)
        bw_h = self._round(bh * aspect)
        if abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
            return (bw, int(bw / aspect + 0.5))
        return (int(bh * aspect + 0.5), bh)
