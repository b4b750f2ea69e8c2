"""Shared code of the distillation bundles: networks, losses, engines, data helpers.

Bundle configs reference these modules by dotted ``_target_`` (e.g. ``common.networks.build_teacher``);
run ``python -m monai.bundle ...`` from the repository root so that ``common`` is importable.
"""

from common.errors import install_excepthook

install_excepthook()
