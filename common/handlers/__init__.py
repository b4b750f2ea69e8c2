"""ignite handlers the bundles attach to MONAI engines; configs target each by its defining module
(e.g. ``common.handlers.progress.ProgressBar``)."""
