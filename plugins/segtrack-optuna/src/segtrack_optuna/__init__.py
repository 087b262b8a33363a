"""segtrack-optuna: `segtrack sweep`, hyperparameter studies on Optuna.

Each trial is a normal segtrack fit (or cross-validation) of the settings with the sampled values
set; the study is a plain Optuna study in the user's storage (SQLite file or any RDB URL), so any
number of `segtrack sweep` processes, on any number of machines, can share its trials, and
Optuna's own tools (``optuna.load_study``, ``optuna-dashboard``) read it.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "sweep"]


def __getattr__(name: str):  # sweep() imports torch: only when asked for, not when the plugin loads
    if name == "sweep":
        from segtrack_optuna.api import sweep

        return sweep
    raise AttributeError(f"module 'segtrack_optuna' has no attribute {name!r}")
