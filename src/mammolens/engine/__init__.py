"""The engine: a config's data (``sources``), one experiment or a cross-validation in a run folder
(``experiment``, ``crossval``, ``run_dir``), and the trainers they run (``trainers``: Lightning, patch
classifier). The only room that knows every other room below the deploy side."""
