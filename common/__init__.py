"""Shared code of the distillation bundles: networks, losses, engines, data helpers.

Bundle configs reference these modules by dotted ``_target_`` (e.g. ``common.networks.sam_teacher.build_teacher``);
run ``python -m monai.bundle ...`` from the repository root so that ``common`` is importable. Importing it changes
nothing global: each config's ``initialize`` installs the one-line error report (``common.errors.install_excepthook``)
where a command starts.
"""
