from ._plan import DolorisTrainingPlan

__all__ = ["DolorisTrainingPlan"]
