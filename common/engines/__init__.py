"""common.engines"""
