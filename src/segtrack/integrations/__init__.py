"""Adapters that drive ``segtrack.FitSession`` from a framework's own loop, one file per framework,
each importing its framework only inside: ``segtrack.integrations.lightning.SegtrackCallback``,
``segtrack.integrations.ignite.SegtrackHandler`` (MONAI's engines are Ignite engines)."""
