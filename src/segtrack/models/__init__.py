"""Models named in configuration: the registry and the built-in UNet."""
