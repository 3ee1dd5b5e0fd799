"""Machine-learning models shipped with the clinic gateway (training code; never imported on the Pi)."""
