"""common.losses"""
