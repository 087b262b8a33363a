"""Columns of the ``runs`` table that segtrack's tracking plugin (segtrack-mlflow) fills: the tags
that say what a run is (a plain fit, a CV parent or fold, a study's parent or trial)."""

MODEL_COLUMN = "tags.segtrack.model"  # the model's name or class, as the fit recorded it
FIT_ID_TAG = "tags.segtrack.fit_id"  # unique per fit
FOLD_COLUMN = "tags.segtrack.fold"  # set on every cross-validation fold run
CV_ID_COLUMN = "tags.segtrack.cv_id"  # on a CV parent and each of its folds
ROLE_COLUMN = "tags.segtrack.role"  # "cv-parent" or "study-parent"
STUDY_ID_COLUMN = "tags.segtrack.study_id"  # on a study's parent runs, its trials' runs and their folds
TRIAL_COLUMN = "tags.segtrack.trial"  # the trial's number, on its run (and a CV trial's folds)
TRIAL_STATE_COLUMN = "tags.segtrack.trial_state"  # completed, pruned or failed, once the trial ended
TRIAL_VALUE_COLUMN = "metrics.trial_value"  # the value the study recorded for a trial, on its run
