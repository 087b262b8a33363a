"""The one public hook path: a fit's plugins, run record, best epoch, plugin state and end-of-fit
rules (``FitSession``), shared by segtrack's trainer, a hand-written loop and the framework adapters."""
