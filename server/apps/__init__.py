"""The built-in app modules: the seed applications. Importing this package registers their functions."""

from server.apps import (
    agents,
    generate_animation,
    generations,
    image_generation,
    project_redesign,
    videos,
    workflows,
)

__all__ = ["agents", "generate_animation", "generations", "image_generation", "project_redesign", "videos", "workflows"]
