"""The built-in app modules: the seed applications. Importing this package registers their functions."""
