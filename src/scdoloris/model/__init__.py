from ._doloris import DolorisModel

__all__ = ["DolorisModel"]
