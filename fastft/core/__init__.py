"""The ground floor: errors, atomic I/O, the model-directory schema (fastft.json),
numerics and system facts. It imports nothing of fastft above it."""
