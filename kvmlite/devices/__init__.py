"""Device models: one device per file, each a state machine over register offsets."""
