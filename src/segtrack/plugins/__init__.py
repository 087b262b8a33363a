"""The plugin system: hook specifications, the plugin manager, the records hooks receive, built-in plugins."""
