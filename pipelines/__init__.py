"""Definitions, jobs, schedules and run presets of the lmforge graph."""
