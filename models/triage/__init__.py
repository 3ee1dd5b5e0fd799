"""Referable diabetic-retinopathy triage model: definition, data, training, export and evaluation."""
