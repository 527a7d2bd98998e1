"""A custom concept that extraction workers load by import path (``tests.analysis.custom_concepts:warmth``)."""

from frobnolab.analysis.concepts import Concept


def warmth() -> Concept:
    return Concept("warmth", "continuous", pixel=lambda b: b["albedo"][..., 0] - b["albedo"][..., 2],
                   description="red minus blue albedo")
