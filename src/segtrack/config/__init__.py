"""Settings: the layers read, the schema of every key, and the checks."""
