"""Confidence intervals of counts estimated from a uniform sample (SPEC §12.5).

A sample of n devices drawn without replacement from a fleet of N, x of them with some
change: the fleet's count is estimated as N·x/n, with the 95 % Wilson score interval of the
proportion x/n, its variance scaled by the finite-population correction (N − n)/(N − 1). With
that correction the interval narrows as the sample covers more of the fleet and is the exact
count when the sample is the whole fleet.

The Wilson interval for a proportion p̂ with z² replaced by z²·f (f the correction):

    centre = (p̂ + z²f/2n) / (1 + z²f/n)
    half   = z√f / (1 + z²f/n) · √(p̂(1 − p̂)/n + z²f/4n²)

Bounds are clamped to what the sample proves: at least x devices, at most N − (n − x).
"""

from __future__ import annotations

import math

#: The normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054


def fpc(sample: int, fleet: int) -> float:
    """The finite-population correction of the variance: (N − n)/(N − 1), 0 for a census."""
    if fleet <= 1 or sample >= fleet:
        return 0.0
    return (fleet - sample) / (fleet - 1)


def wilson_fpc(hits: int, sample: int, fleet: int, z: float = Z95) -> tuple[float, float]:
    """The interval (low, high) of the proportion HITS/SAMPLE in a fleet of FLEET."""
    if sample <= 0:
        return 0.0, 1.0
    p = hits / sample
    z2 = z * z * fpc(sample, fleet)
    denominator = 1 + z2 / sample
    centre = (p + z2 / (2 * sample)) / denominator
    half = math.sqrt(z2) / denominator * math.sqrt(p * (1 - p) / sample + z2 / (4 * sample**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def count_interval(hits: int, sample: int, fleet: int, z: float = Z95) -> dict[str, int]:
    """The fleet's count estimated from HITS of SAMPLE devices: ``estimate``, ``low``,
    ``high`` (whole devices, low rounded down and high up, within what the sample proves)."""
    if sample <= 0:
        return {"estimate": 0, "low": 0, "high": fleet}
    low, high = wilson_fpc(hits, sample, fleet, z)
    # Rounded to a millionth of a device first: a census's N·x/n must not round up to x + 1.
    floor_low = math.floor(round(low * fleet, 6))
    ceil_high = math.ceil(round(high * fleet, 6))
    proven_low, proven_high = hits, fleet - (sample - hits)
    return {
        "estimate": round(hits * fleet / sample),
        "low": min(max(floor_low, proven_low), proven_high),
        "high": max(min(ceil_high, proven_high), proven_low),
    }
