"""The seed project's functions: four applications, one file per Convex module (`functions/project_redesign.py`
holds `projectRedesign:*`). Ripple imports every module of this package when it serves the project; modules
whose names start with an underscore hold shared helpers and register nothing."""
