"""Clinic gateway: glucose meters and retinal photos to the hospital platform."""

__version__ = "0.1.0"
