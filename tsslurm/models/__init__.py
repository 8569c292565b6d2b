"""Models tsslurm builds itself: the tiny test model (`tiny.py`), made with no download."""
