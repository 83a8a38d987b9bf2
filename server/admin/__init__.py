"""The admin console at `/_admin`: its static page (`static/`) and the admin-only system functions it calls."""
