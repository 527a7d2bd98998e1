"""Activation stores, SAE training, scoring, reports and the gallery."""
