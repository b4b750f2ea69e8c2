"""common.handlers"""
