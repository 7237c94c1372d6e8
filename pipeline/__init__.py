"""Stages of the dashcam multi-task pipeline: data, train, evaluate, export, clip, bench."""
