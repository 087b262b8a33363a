"""The data of a fit: configured sources (synthetic, folder, named), splits, batches, fingerprints."""
