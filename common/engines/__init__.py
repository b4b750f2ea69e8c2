"""The distillation trainer and the teacher cache."""

from common.engines import distillation, teacher_cache

__all__ = ["distillation", "teacher_cache"]
