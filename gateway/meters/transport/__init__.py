"""Transport adapters: move bytes, translate library errors into DeviceError, nothing else."""
