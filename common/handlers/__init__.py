"""ignite handlers the bundles attach to MONAI engines."""

from common.handlers.nan_guard import NonFiniteLossGuard
from common.handlers.progress import ProgressBar
from common.handlers.resume import ResumableCheckpoint
from common.handlers.segmentation_report import SegmentationReport
from common.handlers.teacher_export import TeacherExport

__all__ = ["NonFiniteLossGuard", "ProgressBar", "ResumableCheckpoint", "SegmentationReport", "TeacherExport"]
