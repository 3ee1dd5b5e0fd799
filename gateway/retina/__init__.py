"""Retinal photos: capture, quality gate, preprocessing and referable-DR triage."""
